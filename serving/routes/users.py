"""What the service holds of a user, and forgetting it: the caller's own ("me"), or any
user's with an admin key."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.concurrency import run_in_threadpool

from serving.deps import AdminDep, CallerDep, MemoryDep, StoreDep
from serving.forgetting import forget_user, user_data
from serving.schemas import ForgetResponse, UserDataResponse
from storage.tables import MAX_NAME_CHARS

router = APIRouter(tags=["users"])

UserId = Annotated[str, Path(min_length=1, max_length=MAX_NAME_CHARS)]


@router.get("/v1/users/me", response_model=UserDataResponse)
async def my_data(caller: CallerDep, store: StoreDep, memory: MemoryDep) -> UserDataResponse:
    """Counts of what is stored of the caller's history."""
    stored = await run_in_threadpool(user_data, store, memory, caller.user_id)
    return UserDataResponse(user_id=caller.user_id, stored=stored)


@router.delete("/v1/users/me", response_model=ForgetResponse)
async def forget_me(caller: CallerDep, store: StoreDep, memory: MemoryDep) -> ForgetResponse:
    """Forget the caller's whole history: memories, sessions, messages, runs (traces and
    feedback, so no later harvest trains on them). The key stays valid."""
    deleted = await run_in_threadpool(forget_user, store, memory, caller.user_id)
    return ForgetResponse(user_id=caller.user_id, deleted=deleted)


@router.get("/admin/users/{user_id}", response_model=UserDataResponse)
async def user_data_of(user_id: UserId, admin: AdminDep, store: StoreDep,
                       memory: MemoryDep) -> UserDataResponse:
    """Admin key: counts of what is stored of any user's history."""
    stored = await run_in_threadpool(user_data, store, memory, user_id)
    return UserDataResponse(user_id=user_id, stored=stored)


@router.delete("/admin/users/{user_id}", response_model=ForgetResponse)
async def forget_user_of(user_id: UserId, admin: AdminDep, store: StoreDep,
                         memory: MemoryDep) -> ForgetResponse:
    """Admin key: forget any user's whole history (their keys stay: revoke them with
    `evolora keys revoke`)."""
    deleted = await run_in_threadpool(forget_user, store, memory, user_id)
    return ForgetResponse(user_id=user_id, deleted=deleted)
