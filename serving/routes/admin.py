"""Admin operations: check the registry now; promote a version or roll back, then swap."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, status
from fastapi.concurrency import run_in_threadpool
from mlflow.exceptions import MlflowException

from evolora.vocabulary import CHAMPION
from serving.deps import AdminDep, LoaderDep, ServicesDep
from serving.schemas import PromoteRequest
from tasks.registry import ChecksumMismatch, RegistryError, get_alias, promote, rollback

router = APIRouter(prefix="/admin", tags=["admin"])


@router.post("/reload")
async def reload_adapter(admin: AdminDep, loader: LoaderDep) -> dict[str, Any]:
    """Check the registry's champion alias now; swap if it moved. Says what serves."""
    return await run_in_threadpool(loader.check_now)


@router.post("/registry/promote")
async def promote_version(body: PromoteRequest, admin: AdminDep, loader: LoaderDep,
                          services: ServicesDep) -> dict[str, Any]:
    """Promote `version` if it passes the quality gate (or skip the gate with `force`; the
    checksums are checked always), then serve it. The gate's reasons come back either way."""
    evo = services.settings.evolution

    def apply() -> dict[str, Any]:
        decision = promote(loader.client, loader.model_name, body.version, force=body.force,
                           margin=evo.promotion_margin, tolerance=evo.regression_tolerance)
        return {**decision.to_json(), "serving": loader.check_now()}

    return await run_in_threadpool(_registry_call, apply)


@router.post("/registry/rollback")
async def rollback_champion(admin: AdminDep, loader: LoaderDep) -> dict[str, Any]:
    """Make the `previous` version the champion again (a second rollback undoes it), then
    serve it."""

    def apply() -> dict[str, Any]:
        old = get_alias(loader.client, loader.model_name, CHAMPION)
        champion = rollback(loader.client, loader.model_name)
        return {"champion": str(champion.version),
                "rolled_back_from": str(old.version) if old else None,
                "serving": loader.check_now()}

    return await run_in_threadpool(_registry_call, apply)


def _registry_call(apply: Any) -> dict[str, Any]:
    """The registry operation's result; its refusals as 4xx with the cause and the fix."""
    try:
        return apply()
    except ChecksumMismatch as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, _with_fix(exc)) from None
    except RegistryError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, _with_fix(exc)) from None
    except MlflowException as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HTTPException(status.HTTP_400_BAD_REQUEST, first) from None


def _with_fix(exc: RegistryError) -> str:
    return f"{exc}; {exc.fix}" if exc.fix else str(exc)
