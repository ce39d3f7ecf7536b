"""`evolora console`: the web console (Streamlit) on 127.0.0.1 (registered by cli.main).

The console's package is started as Streamlit's script, not imported: it is an entry point
of its own, beside this one.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import subprocess
import sys
from typing import Annotated

import typer

from cli.common import ConfigOption, console, fail, settings_or_exit
from evolora.paths import resolve_config_path

KEY_VARIABLES = ("EVOLORA_API_KEY", "EVOLORA_ADMIN_KEY")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def console_command(
    config: ConfigOption = None,
    host: Annotated[str, typer.Option("--host", help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="The console's port.")] = 8501,
    service_url: Annotated[str | None, typer.Option(
        "--service", help="The running service; default http://serving.host:serving.port.",
    )] = None,
) -> None:
    """Open the web console: chat, progress per cycle, adapters, memory, system.

    The API key is entered in the page, or read from $EVOLORA_API_KEY (an admin key for
    promote and rollback from $EVOLORA_ADMIN_KEY); never pass it on the command line."""
    settings = settings_or_exit(config)
    if not is_loopback(host) and any(os.environ.get(name) for name in KEY_VARIABLES):
        raise fail(f"--host {host} would hand the key in {' / '.join(KEY_VARIABLES)} to "
                   "every visitor of the console",
                   "bind to 127.0.0.1 (and reach it through an SSH tunnel), or unset the "
                   "variable and enter the key in the page")
    spec = importlib.util.find_spec("console.app")
    if spec is None or spec.origin is None:
        raise fail("the console package is not installed", "reinstall: `make install`")
    env = dict(os.environ)
    if config:  # the console loads the same config (else $EVOLORA_CONFIG, as here)
        env["EVOLORA_CONFIG"] = str(resolve_config_path(config).resolve())
    env["STREAMLIT_BROWSER_GATHER_USAGE_STATS"] = "false"
    if service_url:
        env["EVOLORA_CONSOLE_SERVICE_URL"] = service_url
    command = [sys.executable, "-m", "streamlit", "run", spec.origin,
               "--server.address", host, "--server.port", str(port),
               "--server.headless", "true", "--browser.gatherUsageStats", "false",
               # A failure the page did not turn into a sentence still shows no traceback.
               "--client.showErrorDetails", "none", "--client.toolbarMode", "minimal"]
    console.print(f"evolora console on http://{host}:{port} (config {settings.name}); "
                  "Ctrl-C stops it", highlight=False)
    raise typer.Exit(subprocess.call(command, env=env))
