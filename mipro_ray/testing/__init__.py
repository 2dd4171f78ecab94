"""Test doubles shipped with mipro-ray: a fake OpenAI-compatible LLM server on loopback.

The fake works at the real boundary (HTTP on 127.0.0.1), so the real LM client runs against
it. ``python -m mipro_ray.testing --port 8000 --latency 0.2`` runs one standalone.
"""

from __future__ import annotations

from mipro_ray.testing._fake_server import (
    FakeLLMServer,
    FakeRequest,
    Faults,
    default_responder,
    fake_token_count,
)
from mipro_ray.testing._landscape import LandscapeTask, requested_fields

__all__ = [
    "FakeLLMServer",
    "FakeRequest",
    "Faults",
    "LandscapeTask",
    "default_responder",
    "fake_token_count",
    "requested_fields",
]
