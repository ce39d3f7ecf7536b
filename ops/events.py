"""supervisord's event listener: logs and counts every crash and recovery of a component.

Run by supervisord (`python -m ops.events <recoveries.json>`), subscribed to PROCESS_STATE
events. A process that exits unexpectedly is a crash; its next RUNNING is a recovery, timed
from the crash. The counts go to `recoveries.json` (`evolora.platform`), which `evolora
status` shows and the service exports as `evolora_component_crashes_total` /
`evolora_component_recoveries_total`. Log lines go to stderr (supervisord's log file for this
listener): stdout is the event protocol.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from evolora.platform import read_recoveries, write_recoveries


def parse_payload(payload: str) -> dict[str, str]:
    """`processname:service groupname:service from_state:RUNNING expected:0 pid:42` as a
    mapping (the first line only: PROCESS_LOG events carry data after it)."""
    first = payload.split("\n", 1)[0]
    return dict(token.split(":", 1) for token in first.split() if ":" in token)


def apply_event(record: dict[str, dict[str, Any]], event: str, fields: dict[str, str],
                now: float) -> str | None:
    """Update `record` for one state event; returns the log event name, or None."""
    name = fields.get("processname", "")
    if not name or name.startswith("evolora-events"):
        return None
    entry = record.setdefault(name, {"crashes": 0, "recoveries": 0, "fatal": 0})
    if event == "PROCESS_STATE_EXITED" and fields.get("expected") == "0":
        entry["crashes"] += 1
        entry["last_crash_at"] = now
        entry["pending_since"] = now
        return "component.crashed"
    if event == "PROCESS_STATE_RUNNING" and entry.get("pending_since") is not None:
        entry["recoveries"] += 1
        entry["last_recovery_s"] = round(now - entry.pop("pending_since"), 3)
        entry["last_recovery_at"] = now
        return "component.recovered"
    if event == "PROCESS_STATE_BACKOFF":
        return "component.backoff"
    if event == "PROCESS_STATE_FATAL":
        entry["fatal"] += 1
        return "component.fatal"
    if event == "PROCESS_STATE_STOPPED":
        entry.pop("pending_since", None)  # stopped on purpose: nothing to recover
    return None


def main(path: Path) -> None:
    from supervisor import childutils

    while True:
        headers, payload = childutils.listener.wait(sys.stdin, sys.stdout)
        event = headers.get("eventname", "")
        fields = parse_payload(payload)
        record = read_recoveries(path)
        message = apply_event(record, event, fields, time.time())
        if message is not None:
            write_recoveries(path, record)
            line = {"event": message, "component": fields.get("processname"),
                    "from_state": fields.get("from_state"), "pid": fields.get("pid"),
                    **{k: v for k, v in record[fields["processname"]].items()
                       if k in ("crashes", "recoveries", "last_recovery_s")},
                    "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            print(json.dumps(line), file=sys.stderr, flush=True)
        childutils.listener.ok(sys.stdout)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
