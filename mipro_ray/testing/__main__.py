"""``python -m mipro_ray.testing``: run the fake LLM server standalone (see `_fake_server.main`)."""

from __future__ import annotations

import sys

from mipro_ray.testing._fake_server import main

if __name__ == "__main__":
    sys.exit(main())
