"""The FastAPI app: `create_app(settings)`; models and stores are loaded in its lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import HTTPException
from fastapi.responses import JSONResponse

from engines.engine import ContextExceeded, GenerationTimeout
from engines.transformers_runtime import EngineOutOfMemory
from evolora.logs import get_logger
from evolora.platform import recoveries_path
from evolora.settings import Settings
from serving.deps import Services
from serving.limits import BodySizeLimit, InFlightLimiter, RateLimiter, TokenBudget, error_body
from serving.metrics import ServingMetrics
from serving.middleware import LoopbackHostGuard, RequestMetrics
from serving.ops_metrics import OperationsCollector
from serving.routes import admin, agent, chat, feedback, health, memories, users
from serving.startup import open_services
from storage.store import NotFound, StoreError

log = get_logger(__name__)


def create_app(settings: Settings) -> FastAPI:
    """The service for `settings`; nothing heavy happens until the app starts."""
    metrics = ServingMetrics()
    metrics.add_scrape_collector(OperationsCollector(
        settings.paths.resolved_tracking_uri, settings.evolution.registry_model_name,
        recoveries_path(settings)))
    serving = settings.serving
    services = Services(settings, metrics, RateLimiter(serving.rate_limit_per_minute),
                        TokenBudget(serving.token_limit_per_minute),
                        InFlightLimiter(serving.max_concurrent_per_key))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.services = services
        await run_in_threadpool(open_services, services)
        try:
            yield
        finally:
            if services.loader is not None:
                await run_in_threadpool(services.loader.stop)
            if services.runtime is not None:
                # llama.cpp's servers hold ports and threads: stop them with the app.
                await run_in_threadpool(services.runtime.close)
            if services.loader is not None:
                await run_in_threadpool(services.loader.close)  # its downloads
            log.info("serving.stopped")

    app = FastAPI(title="evolora", version="1", lifespan=lifespan)
    for router in (chat.router, agent.router, memories.router, feedback.router,
                   users.router, health.router, admin.router):
        app.include_router(router)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(StoreError, store_error)
    app.add_exception_handler(ContextExceeded, context_exceeded)
    app.add_exception_handler(EngineOutOfMemory, out_of_memory)
    app.add_exception_handler(GenerationTimeout, generation_timeout)
    app.add_exception_handler(Exception, internal_error)
    # The last added runs first: metrics see every response, the guards' 4xx too.
    if not serving.auth_enabled:
        app.add_middleware(LoopbackHostGuard, allowed_hosts=serving.allowed_hosts)
    app.add_middleware(BodySizeLimit, max_bytes=settings.serving.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    """HTTP errors with both `detail` and an OpenAI-style `error` object."""
    assert isinstance(exc, HTTPException)
    kinds = {401: "authentication_error", 403: "permission_error", 404: "not_found_error",
             429: "rate_limit_error"}
    body = error_body(str(exc.detail), kinds.get(exc.status_code, "invalid_request_error"))
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def store_error(request: Request, exc: Exception) -> JSONResponse:
    """A value the store refuses (too long, wrong kind) is the caller's error: 400."""
    status = 404 if isinstance(exc, NotFound) else 400
    return JSONResponse(error_body(str(exc), "invalid_request_error"), status_code=status)


async def context_exceeded(request: Request, exc: Exception) -> JSONResponse:
    """A prompt that passed serving.max_prompt_tokens but not the model's own context (a
    model trained on a shorter one, or an agent run grown over its steps): the caller's 400."""
    message = ("the prompt does not fit the model's context; send a shorter conversation "
               f"(or lower serving.max_prompt_tokens to the model's context): {exc}")
    return JSONResponse(error_body(message, "invalid_request_error", "context_length_exceeded"),
                        status_code=400)


async def out_of_memory(request: Request, exc: Exception) -> JSONResponse:
    """A generation that ran out of GPU memory: 503 with Retry-After. The engine has freed
    what the request held and serves the next one (from the CPU after repeated failures)."""
    retry_after = request.app.state.services.settings.serving.oom_retry_after_s
    message = ("the model ran out of GPU memory on this request; the memory was freed, "
               "retry shortly (a shorter prompt or max_tokens needs less)")
    return JSONResponse(error_body(message, "server_error", "out_of_memory"), status_code=503,
                        headers={"Retry-After": str(retry_after)})


async def generation_timeout(request: Request, exc: Exception) -> JSONResponse:
    """A generation cancelled at serving.generation_timeout_s: 504, counted and logged."""
    services: Services | None = getattr(request.app.state, "services", None)
    if services is not None:
        services.metrics.generation_timeouts.inc()
    log.warning("serving.generation_timeout", path=request.url.path, error=str(exc))
    return JSONResponse(error_body(f"{exc}; ask for fewer tokens (max_tokens) or raise "
                                   "serving.generation_timeout_s", "timeout_error",
                                   "generation_timeout"), status_code=504)


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """A 500 that says nothing of the internals; the log has the exception (not the body)."""
    log.error("serving.unhandled", path=request.url.path, error_type=type(exc).__name__,
              error=str(exc))
    return JSONResponse(error_body("internal server error", "server_error"), status_code=500)
