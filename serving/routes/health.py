"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import text

from serving.deps import Services
from storage.store import Store

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Ready when the model is loaded and the store answers; 503 otherwise."""
    services: Services | None = getattr(request.app.state, "services", None)
    checks = {"model": bool(services and services.runtime is not None),
              "store": False, "memory": bool(services and services.memory is not None)}
    if services is not None and services.store is not None:
        checks["store"] = await run_in_threadpool(store_reachable, services.store)
    ready = all(checks.values())
    body = {"status": "ready" if ready else "not ready", "checks": checks}
    if ready and services is not None and services.loader is not None:
        adapter, version = services.loader.serving
        body["adapter"] = adapter
        body["version"] = version
    code = status.HTTP_200_OK if ready else status.HTTP_503_SERVICE_UNAVAILABLE
    return JSONResponse(body, status_code=code)


def store_reachable(store: Store) -> bool:
    """The database answers a trivial query."""
    try:
        with store.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception:
        return False
    return True


@router.get("/metrics")
def metrics(request: Request) -> Response:
    """Prometheus exposition text of this app's registry."""
    services: Services = request.app.state.services
    content, content_type = services.metrics.render()
    return Response(content, media_type=content_type)
