"""The adapter hot-loader: follows the registry's `champion` alias and swaps adapters live.

A new champion is downloaded (checksum-verified), attached BESIDE the serving adapter, and
then the serving pointer moves in one assignment. Requests take a lease on the adapter name
at their start (`lease`) and keep it to the end, so a request in flight finishes on the
adapter it started with; a retired adapter is detached once its last lease ends. An adapter
being detached is never leased: a request for it waits for the detach to end and loads the
version again. A version that fails to download, verify or load is refused (logged,
counted) for a backoff interval that doubles with each failure (serving/refusals.py); the
current adapter keeps serving meanwhile.

Downloads go into a folder this process owns under `work_dir` (evolora/scratch.py); at start
the folders of processes that are gone (killed mid-download) are removed.

A `v<N>` name is canonical (ASCII digits, no leading zeros: one name per version, safe in a
header); without an admin key only versions the promotion gate approved are served.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from engines.engine import InferenceEngine
from engines.transformers_runtime import BASE_ADAPTER
from evolora.logs import get_logger
from evolora.scratch import Scratch, claim_scratch
from evolora.vocabulary import CHAMPION
from serving.metrics import ServingMetrics
from serving.refusals import Refusals
from tasks.registry import ChecksumMismatch, download_version, get_alias
from tasks.registry.versions import version_gate

log = get_logger(__name__)

# Model names a request may ask for; `v<N>` names a registered version.
CHAMPION_NAMES = ("evolora", CHAMPION)
MAX_ON_DEMAND = 4  # attached non-champion versions kept for `v<N>` requests
DETACH_WAIT_S = 120.0  # the longest a request waits for its version's detach to end
# `[0-9]`, not `\d`: `\d` also matches other scripts' digits (a fullwidth "v1" would pass).
_VERSION_NAME = re.compile(r"v([1-9][0-9]*)")
ACCEPTED_NAMES = ("evolora, champion, base or v<N>: a registered version, N in ASCII digits "
                  "without leading zeros (v3, not v03)")
# What promotion (tasks/registry/promotion.py) records on a version the gate let through.
GATE_APPROVED = "promoted"
# What downloads (and their scratch folders) were called before each process wrote into a
# folder of its own.
_LEGACY_DOWNLOAD = re.compile(r"v[0-9]+-[0-9a-f]{8}|\.evolora-registry-.+")


class UnknownModel(LookupError):
    """A model name that is neither an alias we serve nor a usable registry version."""


class VersionNotApproved(PermissionError):
    """A registered version the promotion gate has not approved, asked for without admin."""


def requested_version(model: str | None) -> str | None:
    """The registry version a `model` name asks for; None for the champion names and base.

    Raises UnknownModel for any other name, a non-canonical `v<N>` included."""
    if model is None or model in CHAMPION_NAMES or model == BASE_ADAPTER:
        return None
    match = _VERSION_NAME.fullmatch(model)
    if match is None:
        # !a: the name goes into a log line and an error body, whatever it contains.
        raise UnknownModel(f"unknown model {model!a}; use {ACCEPTED_NAMES}")
    return match.group(1)


@dataclass
class SwapRecord:
    """One champion swap: versions, and how long generation was blocked by it."""

    from_version: str | None
    to_version: str
    blocking_s: float
    load_s: float
    at: float = field(default_factory=time.time)


def adapter_name(version: str) -> str:
    return f"v{version}"


class AdapterHotLoader:
    """Owns which adapters are attached to the runtime and which one serves `champion`."""

    def __init__(self, runtime: InferenceEngine, client_factory: Callable[[], MlflowClient],
                 model_name: str, work_dir: Path, metrics: ServingMetrics,
                 poll_interval_s: float = 30.0, retry_backoff_s: float = 30.0,
                 retry_backoff_max_s: float = 1800.0) -> None:
        self.runtime = runtime
        self.model_name = model_name
        self.work_root = Path(work_dir)
        self.metrics = metrics
        self.poll_interval_s = poll_interval_s
        self._client_factory = client_factory
        self._client: MlflowClient | None = None
        self._state = threading.Lock()  # guards the pointer, leases, retired and detaching
        self._changed = threading.Condition(self._state)  # a detach ended
        self._check = threading.Lock()  # one registry check (and load) at a time
        self._unload = threading.Lock()  # one detach at a time
        self._serving: tuple[str, str | None] = (BASE_ADAPTER, None)  # (adapter, version)
        self._leases: Counter[str] = Counter()
        self._retired: set[str] = set()  # attached, to be detached when their leases end
        self._detaching: set[str] = set()  # being detached now: never leased
        self._on_demand: list[str] = []  # LRU order of attached non-champion adapters
        self.refusals = Refusals(retry_backoff_s, retry_backoff_max_s)
        self._approved: set[str] = set()  # versions the gate approved (never revoked)
        self.swaps: list[SwapRecord] = []
        self._scratch: Scratch | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def refused(self) -> dict[str, str]:
        """Versions with failures on record -> the last failure and when it is tried again."""
        return self.refusals.snapshot()

    @property
    def work_dir(self) -> Path:
        """The folder downloads go into: this process's own under `work_root`, claimed on
        first use (which sweeps what dead processes left there)."""
        if self._scratch is None:
            self._scratch = claim_scratch(self.work_root, legacy=_is_legacy_download)
        return self._scratch.path

    def leases(self) -> dict[str, int]:
        """Adapter name -> requests holding it now (none when nothing is in flight)."""
        with self._state:
            return dict(self._leases)

    # --- the pointer and leases ---------------------------------------------------------------

    @property
    def serving(self) -> tuple[str, str | None]:
        """(adapter name, registry version or None for the base model) serving `champion`."""
        return self._serving

    @contextmanager
    def lease(self, model: str | None = None) -> Iterator[str]:
        """The adapter name for a requested model, held until the block ends.

        `None`, `evolora`, `champion`: the serving adapter; `base`: the bare model; `v<N>`:
        that registered version (downloaded and attached on demand). Raises UnknownModel.
        """
        name = self._resolve(model)
        try:
            yield name
        finally:
            self._release(name)

    def _resolve(self, model: str | None) -> str:
        version = requested_version(model)
        if version is None and model == BASE_ADAPTER:
            with self._state:
                self._leases[BASE_ADAPTER] += 1
            return BASE_ADAPTER
        if version is None:
            with self._state:
                name = self._serving[0]
                self._leases[name] += 1
            return name
        name = adapter_name(version)
        with self._state:
            if self._claim_attached(name):
                self._leases[name] += 1
                self._touch(name)
                return name
        self._load_on_demand(version)  # returns with the lease taken
        return name

    def _claim_attached(self, name: str) -> bool:
        """Whether `name` is attached and may be leased; un-retires it. Under `_state`.

        An adapter being detached may not: a lease taken now would outlive the detach."""
        if name in self._detaching or name not in self.runtime.adapters:
            return False
        self._retired.discard(name)
        return True

    def _wait_detached(self, name: str) -> None:
        """Block until `name` is not being detached. Under `_state` (via `_changed`)."""
        if not self._changed.wait_for(lambda: name not in self._detaching,
                                      timeout=DETACH_WAIT_S):
            raise UnknownModel(f"adapter {name} is still being unloaded; retry shortly")

    def _release(self, name: str) -> None:
        with self._state:
            self._leases[name] -= 1
            idle = self._leases[name] <= 0
            if idle:
                del self._leases[name]
            retire = idle and name in self._retired
        if retire:
            # Off the request's thread: a llama.cpp detach loads a new instance (~0.5 s).
            threading.Thread(target=self._detach, args=(name,), name="adapter-detach",
                             daemon=True).start()

    def _touch(self, name: str) -> None:
        if name != self._serving[0]:
            if name in self._on_demand:
                self._on_demand.remove(name)
            self._on_demand.append(name)

    def check_servable(self, model: str | None, admin: bool) -> None:
        """Nothing if `model` may be served to this caller; else UnknownModel (a name we do not
        serve, a version not registered) or VersionNotApproved (not gate-approved, no admin).

        An admin key may load any registered version (`lease` checks that it exists)."""
        version = requested_version(model)
        if version is None or admin:
            return
        if version in self._approved or version == self._serving[1]:
            return
        try:
            record = self.client.get_model_version(self.model_name, version)
        except Exception:
            raise UnknownModel(f"model {self.model_name!r} has no version {version}") from None
        decision = version_gate(record).get("decision")
        if decision != GATE_APPROVED:
            verdict = "the gate refused it" if decision else "it was never gated"
            raise VersionNotApproved(
                f"version {version} is not approved by the promotion gate ({verdict}); "
                "without an admin key only gate-approved versions, evolora, champion and base "
                "are served")
        self._approved.add(version)

    # --- registry checks ----------------------------------------------------------------------

    def check_now(self) -> dict[str, Any]:
        """Compare the champion alias with what serves; load and swap if it moved."""
        with self._check:
            before = self._serving[1]
            try:
                champion = get_alias(self.client, self.model_name, CHAMPION)
            except Exception as exc:  # a registry outage must not stop serving
                log.warning("hot_loader.registry_unreachable", error=str(exc))
                return self._report(before, error=f"registry unreachable: {exc}")
            # MLflow hands versions back as int or str depending on the call: compare as str.
            if champion is None or str(champion.version) == before:
                return self._report(before)
            version = str(champion.version)
            refusal = self.refusals.in_force(version)
            if refusal is not None:
                return self._report(before, error=f"version {version} was refused: {refusal}")
            try:
                self._swap_to(version)
            except Exception as exc:
                return self._report(before, error=f"version {version} refused: {exc}")
            return self._report(before)

    def _report(self, before: str | None, error: str | None = None) -> dict[str, Any]:
        adapter, version = self._serving
        last = self.swaps[-1] if self.swaps and version != before else None
        return {"adapter": adapter, "version": version, "changed": version != before,
                "error": error, "refused": dict(self.refused),
                "swap_blocking_ms": round(last.blocking_s * 1000, 3) if last else None}

    def _swap_to(self, version: str) -> None:
        name = adapter_name(version)
        started = time.perf_counter()
        blocking = 0.0
        with self._state:
            self._wait_detached(name)
            attached = self._claim_attached(name)
        if not attached:
            blocking = self._download_and_attach(version)
        load_s = time.perf_counter() - started
        with self._state:
            old_name, old_version = self._serving
            self._serving = (name, version)  # the atomic swap: one tuple assignment
            self._retired.discard(name)
            if name in self._on_demand:
                self._on_demand.remove(name)
            retire_old = old_name != BASE_ADAPTER
            if retire_old:
                self._retired.add(old_name)
            old_idle = self._leases.get(old_name, 0) == 0
        record = SwapRecord(old_version, version, blocking, load_s)
        self.swaps.append(record)
        self.metrics.swaps.inc()
        self.metrics.swap_seconds.observe(blocking)
        self.metrics.set_serving(version, name)
        log.info("hot_loader.swapped", from_version=old_version, to_version=version,
                 blocking_ms=round(blocking * 1000, 3), load_s=round(load_s, 3))
        if retire_old and old_idle:
            self._detach(old_name)

    def _load_on_demand(self, version: str) -> None:
        """Attach `version` if it is not, and lease it (the caller releases)."""
        refusal = self.refusals.in_force(version)
        if refusal is not None:
            raise UnknownModel(f"version {version} was refused: {refusal}")
        name = adapter_name(version)
        with self._check:
            with self._state:
                self._wait_detached(name)
                if self._claim_attached(name):
                    self._leases[name] += 1
                    self._touch(name)
                    return
            try:
                self.client.get_model_version(self.model_name, version)
            except Exception:
                raise UnknownModel(f"model {self.model_name!r} has no version {version}") \
                    from None
            try:
                self._download_and_attach(version)
            except Exception as exc:
                raise UnknownModel(f"version {version} refused: {exc}") from None
            with self._state:
                self._leases[name] += 1
                self._touch(name)
            self._evict_on_demand()

    def _evict_on_demand(self) -> None:
        with self._state:
            extra = self._on_demand[:-MAX_ON_DEMAND] if len(self._on_demand) > MAX_ON_DEMAND \
                else []
            for name in extra:
                self._on_demand.remove(name)
                self._retired.add(name)
            idle = [n for n in extra if self._leases.get(n, 0) == 0]
        for name in idle:
            self._detach(name)

    def _download_and_attach(self, version: str) -> float:
        """Download, verify and attach a version; returns the seconds the model lock was held.

        Any failure refuses the version (recorded, counted) and re-raises.
        """
        dest = self.work_dir / f"{adapter_name(version)}-{uuid.uuid4().hex[:8]}"
        try:
            download_version(self.client, self.model_name, version, dest)
        except ChecksumMismatch as exc:
            self._refuse(version, "checksum", str(exc))
            shutil.rmtree(dest, ignore_errors=True)
            raise
        except Exception as exc:
            self._refuse(version, "download", str(exc))
            shutil.rmtree(dest, ignore_errors=True)
            raise
        # The engine reports what the attach cost generation: the transformers engine holds
        # its model lock while loading; llama.cpp loads a new instance beside the serving
        # one and blocks only for the pointer move.
        try:
            blocked = self.runtime.attach(adapter_name(version), dest)
        except Exception as exc:
            self._refuse(version, "load", str(exc))
            shutil.rmtree(dest, ignore_errors=True)
            raise
        self.refusals.forget(version)
        return blocked

    def _refuse(self, version: str, reason: str, detail: str) -> None:
        refusal = self.refusals.refuse(version, reason, detail)
        self.metrics.refused.labels(reason).inc()
        log.error("hot_loader.refused", version=version, reason=reason, detail=detail,
                  failures=refusal.failures)

    def _detach(self, name: str) -> None:
        """Detach a retired adapter, unless it was leased or made serving again since."""
        with self._state:
            if (name not in self._retired or self._leases.get(name, 0) > 0
                    or name == self._serving[0] or name in self._detaching):
                return
            self._retired.discard(name)
            if name not in self.runtime.adapters:
                return
            # From here until the detach ends, requests for `name` wait (_wait_detached).
            self._detaching.add(name)
        try:
            with self._unload:
                path = self.runtime.adapters.get(name)
                self.runtime.detach(name)
                if path:
                    shutil.rmtree(path, ignore_errors=True)
                log.info("hot_loader.detached", adapter=name)
        except Exception as exc:  # it stays attached (and leasable); the service goes on
            log.error("hot_loader.detach_failed", adapter=name, error=str(exc))
        finally:
            with self._changed:
                self._detaching.discard(name)
                self._changed.notify_all()

    def registered_versions(self, approved_only: bool = False) -> list[str]:
        """Version numbers of the registered model, oldest first (empty if unreachable);
        `approved_only`: those a caller without an admin key may ask for."""
        try:
            versions = self.client.search_model_versions(f"name = '{self.model_name}'")
        except Exception:
            return []
        serving = self._serving[1]
        return sorted((str(v.version) for v in versions
                       if not approved_only or str(v.version) == serving
                       or version_gate(v).get("decision") == GATE_APPROVED), key=int)

    # --- the polling thread -------------------------------------------------------------------

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = self._client_factory()
        return self._client

    def start(self) -> None:
        """Sweep stale downloads, check once now, then poll every `poll_interval_s` in a
        daemon thread."""
        log.info("hot_loader.work_dir", path=str(self.work_dir))  # claimed (and swept) now
        self.check_now()
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name="adapter-hot-loader",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def close(self) -> None:
        """Remove this process's downloads; call after the engine has closed."""
        if self._scratch is not None:
            self._scratch.release()
            self._scratch = None

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            try:
                self.check_now()
            except Exception as exc:  # the poller must outlive any one bad check
                log.error("hot_loader.check_failed", error=str(exc))


def _is_legacy_download(path: Path) -> bool:
    return path.is_dir() and _LEGACY_DOWNLOAD.fullmatch(path.name) is not None
