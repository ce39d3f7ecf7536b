"""prefect.yaml: every deployment points at a real flow, with valid parameters and schedule."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml
from prefect import Flow
from prefect.client.schemas.schedules import CronSchedule

from evolora.paths import PROJECT_ROOT
from evolora.settings import PlatformSettings

DEPLOYMENTS = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())["deployments"]


def load_entrypoint(entrypoint: str) -> Flow:
    path, function = entrypoint.split(":")
    module = importlib.import_module(Path(path).with_suffix("").as_posix().replace("/", "."))
    return getattr(module, function)


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_deployment_entrypoint_is_a_flow_taking_its_parameters(deployment: dict) -> None:
    flow = load_entrypoint(deployment["entrypoint"])
    assert isinstance(flow, Flow)
    validated = flow.validate_parameters(deployment.get("parameters", {}))
    assert set(validated) >= set(deployment.get("parameters", {}))
    config = deployment.get("parameters", {}).get("config")
    if config:
        assert (PROJECT_ROOT / "configs" / f"{config}.yaml").is_file()
    assert deployment["work_pool"]["name"] == PlatformSettings().work_pool == "evolora-local"


def test_nightly_cycle_is_scheduled_every_night() -> None:
    nightly = next(d for d in DEPLOYMENTS if d["name"] == "nightly")
    assert nightly["entrypoint"] == "flows/cycle.py:cycle_flow"
    [schedule] = nightly["schedules"]
    cron = CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])
    assert cron.cron == "0 3 * * *"
    assert schedule.get("active", True)
