"""A component that dies as it starts: supervisord retries it `platform.start_retries` times,
backing off, then leaves it FATAL; the event listener counts it (real supervisord)."""

from __future__ import annotations

import sys
import time

import pytest

from evolora.platform import logs_dir, read_recoveries, recoveries_path
from evolora.settings import Settings
from ops.components import Component
from ops.supervisor import start_supervisord, stop_supervisord


@pytest.mark.server
def test_a_component_that_keeps_dying_backs_off_then_is_fatal(tiny_settings: Settings) -> None:
    platform = tiny_settings.platform.model_copy(update={"start_retries": 2})
    settings = tiny_settings.model_copy(update={"platform": platform})
    broken = Component("broken", [sys.executable, "-c", "import sys; sys.exit(3)"],
                       health_url="http://127.0.0.1:9/", ui_url="")
    supervisor = start_supervisord(settings, [broken], env={})
    try:
        supervisor.start("broken")
        deadline = time.monotonic() + 60
        while supervisor.processes()["broken"]["statename"] != "FATAL":
            assert time.monotonic() < deadline, supervisor.processes()["broken"]
            time.sleep(0.2)
        while read_recoveries(recoveries_path(settings)).get("broken", {}).get("fatal") != 1:
            assert time.monotonic() < deadline, read_recoveries(recoveries_path(settings))
            time.sleep(0.2)
        supervisord_log = (logs_dir(settings) / "supervisord.log").read_text()
        # The first start and its two retries, then supervisord gives up.
        assert supervisord_log.count("spawned: 'broken'") == 3, supervisord_log
        assert "gave up: broken entered FATAL state" in supervisord_log
        events = (logs_dir(settings) / "platform-events.log").read_text()
        assert "component.backoff" in events and "component.fatal" in events
    finally:
        stop_supervisord(settings)
