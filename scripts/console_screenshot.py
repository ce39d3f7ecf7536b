"""A screenshot of the web console's progress page, drawn from the MLflow store the config
points at: what the README shows (`docs/console-progress.png`) after a real multi-night run.

    .venv/bin/python scripts/console_screenshot.py -c demo [--out docs/console-progress.png]

Starts the console on a free 127.0.0.1 port (the progress page reads MLflow and the cycles'
folders only: no service is needed) and photographs it with Debian's headless chromium
(`apt-get install -y chromium chromium-driver`; selenium from the dev extras).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from console.launch import running_console, screenshot_progress
from evolora.paths import PROJECT_ROOT, resolve_config_path
from evolora.settings import ConfigError, load_settings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", default=os.environ.get("EVOLORA_CONFIG", "demo"))
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "docs" / "console-progress.png")
    args = parser.parse_args()
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"EVOLORA_CONFIG": str(resolve_config_path(args.config).resolve())}
    try:
        with running_console(env, port) as url:
            out = screenshot_progress(url, args.out)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out} (progress page of {settings.paths.resolved_tracking_uri})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
