"""`evolora serve`: the FastAPI service under uvicorn (registered by cli.main)."""

from __future__ import annotations

from typing import Annotated

import typer
from pydantic import ValidationError

from cli.common import ConfigOption, fail, settings_or_exit, state
from evolora.settings import ServingSettings, Settings, describe_validation_errors


def serve_command(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option("--host", help="Bind address; default "
                                             "serving.host (127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port; default serving.port.")
                    ] = None,
) -> None:
    """Serve the OpenAI-compatible API, the agent and memory routes, with adapter hot-loading."""
    import uvicorn

    from serving.app import create_app

    settings = with_bind_address(settings_or_exit(config), host, port)
    serving = settings.serving
    uvicorn.run(create_app(settings), host=serving.host, port=serving.port,
                log_level=state.log_level.lower(), access_log=False,
                # SIGTERM: requests in flight get this long, then are cancelled and the
                # lifespan stops the engine (which cancels its generations).
                timeout_graceful_shutdown=max(1, round(serving.shutdown_grace_s)))


def with_bind_address(settings: Settings, host: str | None, port: int | None) -> Settings:
    """The settings with --host/--port applied, validated again (no open host without auth)."""
    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    if not overrides:
        return settings
    try:
        serving = ServingSettings(**{**settings.serving.model_dump(), **overrides})
    except ValidationError as exc:
        raise fail("; ".join(describe_validation_errors(exc)),
                   "pass a loopback --host, or enable serving.auth_enabled") from None
    return settings.model_copy(update={"serving": serving})
