"""The end of `make demo`: start the service on 127.0.0.1, ask the agent one question, print
the served answer and which adapter gave it, then stop.

    .venv/bin/python scripts/served_answer.py -c demo "What is 15% of 240, plus 12?"
"""

from __future__ import annotations

import argparse
import json
import sys

import httpx

from cli.common import log_to_file
from evolora.settings import load_settings
from serving.app import create_app
from serving.local_server import running_server

DEFAULT_QUESTION = "How many kilometers is 26 miles?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default=DEFAULT_QUESTION)
    parser.add_argument("-c", "--config", default="demo")
    args = parser.parse_args()
    # In-process on a free 127.0.0.1 port; a config with keys switched on is a deployment,
    # which this demo does not create keys for.
    settings = load_settings(args.config)
    log_to_file(settings)  # library warnings to the log file, as every long command does
    if settings.serving.auth_enabled:
        print("serving.auth_enabled is on: call the running service with a key instead "
              "(evolora serve, evolora keys create)", file=sys.stderr)
        return 2
    with running_server(create_app(settings)) as base_url:
        reply = httpx.post(f"{base_url}/v1/agent/runs", json={"question": args.question},
                           timeout=300)
    if reply.status_code != 200:
        print(f"the service answered {reply.status_code}: {reply.text}", file=sys.stderr)
        return 1
    run = reply.json()
    print(f"question: {args.question}")
    for step in run["steps"]:
        print(f"  {step['tool']}({step['argument']}) -> {step['observation']}")
    print(f"served answer ({run['adapter']}): {run['final_answer'] or run['error']}")
    print(json.dumps({"adapter": run["adapter"], "final_answer": run["final_answer"],
                      "error": run["error"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
