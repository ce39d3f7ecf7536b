"""Scratch folders owned by a live process, and the sweep that removes a dead owner's.

The service downloads adapter versions and converts them to GGUF into folders under
`<data_dir>`; a process killed mid-way leaves its copies behind. Each process therefore
writes into a folder of its own, `<root>/owner-<pid>-<random>/`, and holds an OS file lock on
`<root>/owner-<pid>-<random>.lock` for as long as it runs (released by the OS when it dies,
however it dies). `sweep_stale(root)` removes every folder whose lock it can take: nobody
holds it, so its owner is gone. A live owner's folder, in this process or another (an
evaluation beside the service on one data dir), is never touched.

    scratch = claim_scratch(root)     # sweeps, then claims
    ... write under scratch.path ...
    scratch.release()                 # removes the folder, frees the lock
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from evolora.logs import get_logger

log = get_logger(__name__)

OWNER_PREFIX = "owner-"
LOCK_SUFFIX = ".lock"
_OWNER_NAME = re.compile(r"owner-[0-9]+-[0-9a-f]{8}")


@dataclass
class Scratch:
    """A folder this process owns while `lock` is held."""

    path: Path
    lock: FileLock

    def release(self) -> None:
        """Remove the folder and free the lock (idempotent)."""
        if not self.lock.is_locked:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        Path(self.lock.lock_file).unlink(missing_ok=True)
        self.lock.release()


def claim_scratch(root: Path, legacy: Callable[[Path], bool] | None = None) -> Scratch:
    """A new folder under `root` owned by this process, after sweeping dead owners' folders
    (and entries `legacy` recognises: copies written before folders had owners)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    sweep_stale(root, legacy)
    name = f"{OWNER_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    lock = _file_lock(root / f"{name}{LOCK_SUFFIX}")
    lock.acquire(timeout=0)  # a fresh random name: nobody else can hold it
    # The lock exists before the folder: a sweep never sees an owner folder without one.
    path = root / name
    path.mkdir()
    return Scratch(path, lock)


def sweep_stale(root: Path, legacy: Callable[[Path], bool] | None = None) -> list[Path]:
    """Remove the owner folders under `root` whose owner is gone (and `legacy` entries);
    returns what was removed."""
    root = Path(root)
    if not root.is_dir():
        return []
    removed: list[Path] = []
    for entry in sorted(root.iterdir()):
        if entry.name.endswith(LOCK_SUFFIX) and _OWNER_NAME.fullmatch(entry.stem):
            lock = _file_lock(entry)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue  # its owner is alive
            try:
                folder = root / entry.stem
                if folder.exists():
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(folder)
                entry.unlink(missing_ok=True)
            finally:
                lock.release()
        elif _OWNER_NAME.fullmatch(entry.name):
            # An owner folder always has its lock (claimed first, removed last): without
            # one it is an orphan.
            if not (root / f"{entry.name}{LOCK_SUFFIX}").exists():
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
        elif legacy is not None and legacy(entry):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    if removed:
        log.info("scratch.swept", root=str(root), removed=[p.name for p in removed])
    return removed


def _file_lock(path: Path) -> FileLock:
    # Not thread-local: the lock is claimed on one thread and released on another (a
    # service starts and stops on different worker threads). No soft fallback: a lock file
    # that merely exists would look held forever.
    return FileLock(str(path), thread_local=False, fallback_to_soft=False)
