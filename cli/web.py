"""`evolora console`: the web console (Streamlit) on 127.0.0.1 (registered by cli.main).

The console is started as a module (`python -m console.launch`), not imported: it is an
entry point of its own, beside this one.
"""

from __future__ import annotations

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
    env = dict(os.environ)
    if config:  # the console loads the same config (else $EVOLORA_CONFIG, as here)
        env["EVOLORA_CONFIG"] = str(resolve_config_path(config).resolve())
    env["STREAMLIT_BROWSER_GATHER_USAGE_STATS"] = "false"
    if service_url:
        env["EVOLORA_CONSOLE_SERVICE_URL"] = service_url
    # Run as a module, not imported: console/ is an entry point beside this one.
    command = [sys.executable, "-m", "console.launch", "--host", host, "--port", str(port)]
    console.print(f"evolora console on http://{host}:{port} (config {settings.name}); "
                  "Ctrl-C stops it", highlight=False)
    raise typer.Exit(subprocess.call(command, env=env))
