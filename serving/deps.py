"""What routes depend on, as `Annotated` aliases: the services, the caller (metered for the
routes that generate), the admin caller."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status

from agent.memory import MemoryStore
from engines.engine import InferenceEngine
from evolora.settings import Settings
from serving.hot_loader import AdapterHotLoader
from serving.limits import InFlightLimiter, RateLimiter, TokenBudget, retry_after_header
from serving.metrics import ServingMetrics
from storage.store import Store

LOCAL_USER = "local"


@dataclass
class Services:
    """Everything the lifespan loads; routes reach it through the dependencies below."""

    settings: Settings
    metrics: ServingMetrics
    limiter: RateLimiter
    token_budget: TokenBudget
    in_flight: InFlightLimiter
    runtime: InferenceEngine | None = None  # serving.engine's
    store: Store | None = None
    memory: MemoryStore | None = None
    loader: AdapterHotLoader | None = None


@dataclass(frozen=True)
class Caller:
    """Who is asking: the user the key belongs to (or the single local user)."""

    user_id: str
    key_id: str
    is_admin: bool


def get_services(request: Request) -> Services:
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None or services.runtime is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the service is starting")
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def get_runtime(services: ServicesDep) -> InferenceEngine:
    assert services.runtime is not None
    return services.runtime


def get_store(services: ServicesDep) -> Store:
    assert services.store is not None
    return services.store


def get_memory(services: ServicesDep) -> MemoryStore:
    assert services.memory is not None
    return services.memory


def get_loader(services: ServicesDep) -> AdapterHotLoader:
    assert services.loader is not None
    return services.loader


RuntimeDep = Annotated[InferenceEngine, Depends(get_runtime)]
StoreDep = Annotated[Store, Depends(get_store)]
MemoryDep = Annotated[MemoryStore, Depends(get_memory)]
LoaderDep = Annotated[AdapterHotLoader, Depends(get_loader)]


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, message,
                         headers={"WWW-Authenticate": "Bearer"})


def get_caller(request: Request, services: ServicesDep) -> Caller:
    """The caller of a bearer API key (or the local user without auth), rate-limited."""
    if not services.settings.serving.auth_enabled:
        caller = Caller(LOCAL_USER, LOCAL_USER, True)
    else:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("missing API key: send `Authorization: Bearer <key>`")
        assert services.store is not None
        record = services.store.verify_key(token.strip())
        if record is None:
            raise _unauthorized("invalid or revoked API key")
        caller = Caller(str(record.user_id), str(record.id), bool(record.is_admin))
    wait_s = services.limiter.take(caller.key_id)
    if wait_s > 0:
        services.metrics.rate_limited.inc()
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS,
                            f"rate limit of {services.settings.serving.rate_limit_per_minute} "
                            "requests per minute exceeded",
                            headers={"Retry-After": retry_after_header(wait_s)})
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]


def get_admin(caller: CallerDep) -> Caller:
    if not caller.is_admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "this route needs an admin key")
    return caller


AdminDep = Annotated[Caller, Depends(get_admin)]


def get_metered_caller(caller: CallerDep, services: ServicesDep) -> Iterator[Caller]:
    """The caller of a route that generates: within its token budget and concurrency cap.

    The in-flight slot is held until the response has been sent, a stream included (a
    dependency with yield exits after the response), and released however it ends."""
    serving = services.settings.serving
    wait_s = services.token_budget.wait_s(caller.key_id)
    if wait_s > 0:
        services.metrics.rate_limited.inc()
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS,
                            f"token budget of {serving.token_limit_per_minute} tokens per minute "
                            "(serving.token_limit_per_minute) used up: prompt and completion "
                            "tokens count",
                            headers={"Retry-After": retry_after_header(wait_s)})
    if not services.in_flight.acquire(caller.key_id):
        services.metrics.rate_limited.inc()
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS,
                            f"{serving.max_concurrent_per_key} requests of this key already in "
                            "flight, the limit (serving.max_concurrent_per_key); retry when "
                            "one ends", headers={"Retry-After": "1"})
    try:
        yield caller
    finally:
        services.in_flight.release(caller.key_id)


MeteredCallerDep = Annotated[Caller, Depends(get_metered_caller)]


def json_safe(value: Any) -> Any:
    """Datetimes and other values as JSON-friendly data."""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value
