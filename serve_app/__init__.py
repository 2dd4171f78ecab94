"""Ray Serve app: a drop-in optimizer endpoint for Ax's ``AxMiPRO`` (``optimizerEndpoint``).

``serve run serve_app:app`` (development) or ``serve deploy serve_app/serve_config.yaml``
(production). ``app`` is built on first access from ``MIPRO_RAY_*`` settings, never at import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from serve_app.deployment import build_app
from serve_app.settings import Settings, get_settings

if TYPE_CHECKING:
    from ray.serve import Application

    app: Application

__all__ = [
    "Settings",
    "app",
    "build_app",
    "get_settings",
]


def __getattr__(name: str) -> object:
    if name == "app":
        return build_app()
    raise AttributeError(f"module 'serve_app' has no attribute {name!r}")
