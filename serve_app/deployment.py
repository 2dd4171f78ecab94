"""The Ray Serve deployment: stateless FastAPI ingress replicas over the study actors."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve import Application

from serve_app.routes import create_app
from serve_app.settings import Settings, get_settings
from serve_app.studies import StudyService

DEPLOYMENT_NAME = "mipro_ray_optimizer"


@serve.ingress()
class OptimizerIngress:
    """One ingress replica; holds no study state (see ``serve_app.study_actor``).

    Args:
        settings: The settings of the process that built the application.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._service = StudyService(settings)

    def __serve_build_asgi_app__(self) -> FastAPI:
        replica = serve.get_replica_context().replica_id.unique_id
        return create_app(self._service, self._settings, replica=replica)


def build_app(settings: Settings | None = None, *, replica_num_cpus: float = 0.0) -> Application:
    """The bound Serve application.

    Args:
        settings: Settings to use; read from ``MIPRO_RAY_*`` when None.
        replica_num_cpus: CPUs reserved per replica. Replicas mostly await actors and the
            database, so the default reserves none.
    """
    settings = settings if settings is not None else get_settings()
    options: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        "max_ongoing_requests": settings.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": replica_num_cpus},
    }
    if settings.autoscaling_min_replicas is not None:
        options["autoscaling_config"] = {
            "min_replicas": settings.autoscaling_min_replicas,
            "max_replicas": settings.autoscaling_max_replicas,
        }
    else:
        options["num_replicas"] = settings.num_replicas
    deployment = serve.deployment(**options)(OptimizerIngress)
    application: Application = deployment.bind(settings)
    return application
