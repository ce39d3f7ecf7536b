"""What every page shares: the settings, the service connection from the sidebar, the MLflow
client, and errors shown as a sentence with the fix."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import streamlit as st
from mlflow.tracking import MlflowClient

from console.client import ConsoleError, ServiceClient
from evolora.settings import ConfigError, Settings, load_settings

API_KEY_ENV = "EVOLORA_API_KEY"
ADMIN_KEY_ENV = "EVOLORA_ADMIN_KEY"
SERVICE_URL_ENV = "EVOLORA_CONSOLE_SERVICE_URL"


def settings() -> Settings:
    """The config `evolora console -c` named ($EVOLORA_CONFIG), loaded each run (cheap)."""
    try:
        return load_settings(os.environ.get("EVOLORA_CONFIG"))
    except ConfigError as exc:
        raise ConsoleError(f"The console cannot read its config: {exc}",
                           "Fix the config, or start the console with `-c demo`.") from None


def default_service_url(current: Settings) -> str:
    serving = current.serving
    host = "127.0.0.1" if serving.host in ("0.0.0.0", "::") else serving.host
    return os.environ.get(SERVICE_URL_ENV) or f"http://{host}:{serving.port}"


def sidebar(current: Settings) -> None:
    """The connection: the service's address and the API key (entered, or from
    $EVOLORA_API_KEY; a password field, kept in this browser session only)."""
    st.session_state.setdefault("service_url", default_service_url(current))
    st.session_state.setdefault("api_key", os.environ.get(API_KEY_ENV, ""))
    with st.sidebar:
        st.text_input("Service", key="service_url", help="The running `evolora serve`.")
        st.text_input("API key", key="api_key", type="password",
                      help="`evolora keys create NAME`; not needed when the service runs "
                           "without auth (serving.auth_enabled: false).")
        st.caption(f"config `{current.name}` · MLflow `{current.paths.resolved_tracking_uri}`")


def service() -> ServiceClient:
    """The client of the service the sidebar names."""
    # A callback runs before the sidebar: the defaults stand in for a value not set yet.
    url = str(st.session_state.get("service_url") or default_service_url(settings())).strip()
    if not url.startswith(("http://", "https://")):
        raise ConsoleError(f"The service address {url!r} is not a URL.",
                           "Enter one like http://127.0.0.1:8000 in the sidebar.")
    key = st.session_state.get("api_key", os.environ.get(API_KEY_ENV, ""))
    return ServiceClient(url, str(key or "").strip() or None)


def mlflow_client(current: Settings) -> MlflowClient:
    """A client of the config's MLflow store (nothing created, no global state changed)."""
    return MlflowClient(tracking_uri=current.paths.resolved_tracking_uri)


def guarded(render: Callable[[], Any]) -> None:
    """Run a page; any failure is one sentence with its fix, never a traceback."""
    try:
        render()
    except ConsoleError as exc:
        st.error(exc.sentence())
    except Exception as exc:  # the person reading the page needs the cause, not the stack
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        st.error(f"This page failed: {type(exc).__name__}: {first[:300]}. If it names the "
                 "MLflow store, check paths.tracking_uri with `evolora doctor`; otherwise "
                 "reload the page.")
