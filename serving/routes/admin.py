"""Admin operations: force a registry check now."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from serving.deps import AdminDep, LoaderDep

router = APIRouter(prefix="/admin", tags=["admin"])


@router.post("/reload")
async def reload_adapter(admin: AdminDep, loader: LoaderDep) -> dict[str, Any]:
    """Check the registry's champion alias now; swap if it moved. Says what serves."""
    return await run_in_threadpool(loader.check_now)
