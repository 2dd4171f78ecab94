"""Session-wide fixtures: one Ray cluster per test session.

`.ci/run` starts a two-node local Ray cluster (head + worker, with the dashboard) and a
PostgreSQL server, and exports their addresses:

- ``MIPRO_RAY_TEST_RAY_ADDRESS``: e.g. ``127.0.0.1:6379``; tests connect to it. When unset, the
  first test that needs Ray starts a small local cluster with ``ray.init`` for the session.
- ``MIPRO_RAY_TEST_POSTGRES_URL``: a SQLAlchemy URL of an empty database; tests marked
  ``postgres`` are skipped without it, unless ``CI`` is set (then they fail).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """Connects the test process to the session's Ray cluster and yields its GCS address."""
    import ray

    address = os.environ.get("MIPRO_RAY_TEST_RAY_ADDRESS")
    if address:
        ctx = ray.init(address=address, namespace="mipro_ray_tests", log_to_driver=False)
    else:
        ctx = ray.init(
            num_cpus=4,
            namespace="mipro_ray_tests",
            include_dashboard=False,
            log_to_driver=False,
        )
    try:
        yield str(ctx.address_info["gcs_address"])
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A SQLAlchemy URL of the test PostgreSQL database started by `.ci/run`."""
    url = os.environ.get("MIPRO_RAY_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("MIPRO_RAY_TEST_POSTGRES_URL is not set: .ci/run must start PostgreSQL")
        pytest.skip("MIPRO_RAY_TEST_POSTGRES_URL is not set (run .ci/run or start PostgreSQL)")
    return url
