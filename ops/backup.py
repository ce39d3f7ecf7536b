"""`evolora backup create | restore`: one archive of everything a user would lose, taken while
the platform runs, restored only whole.

What goes in: the data directory (the SQL store with keys, sessions, traces; Chroma's
memories; adapters; cycle journals and their members; the datasets with the frozen test
sets; Prefect's database) and the MLflow folder (its SQLite store, the artifacts, hence the
registry's versions). Every SQLite database is copied with SQLite's online backup API, a
consistent snapshot even while the service writes (its -wal/-shm files are not copied);
other files are copied as they are. Left out, because they are rebuilt: prepared base models
(`evolora models prepare`), logs, the engine's converted adapters, the service's downloaded
copies, the supervisor's files.

The archive (tar.gz) starts with `MANIFEST.json`: each file's path, size and SHA-256, and the
source folders. Restore reads it first, then checks every file against it before anything
lands in the target: a corrupt, truncated or partial archive is refused, naming the file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evolora.logs import get_logger
from evolora.settings import Settings

log = get_logger(__name__)

MANIFEST = "MANIFEST.json"
FORMAT = 1
SQLITE_MAGIC = b"SQLite format 3\x00"
# Rebuilt or transient, relative to the data directory.
SKIPPED_DATA = {"models", "logs", "engine", "serving"}
SKIPPED_PLATFORM = {"supervisord.conf", "supervisor.sock", "supervisord.pid",
                    "recoveries.json"}
SKIPPED_SUFFIXES = ("-wal", "-shm", "-journal", ".lock")
CHUNK = 1 << 20


class BackupError(RuntimeError):
    """An archive that cannot be written or restored; the message names the file and fix."""


@dataclass
class BackupReport:
    path: Path
    files: int
    bytes: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "files": self.files, "bytes": self.bytes,
                "seconds": round(self.seconds, 2)}


def _roots(settings: Settings) -> dict[str, Path]:
    return {"data": Path(settings.paths.data_dir).resolve(),
            "mlruns": Path(settings.paths.mlruns_dir).resolve()}


def _wanted(root_name: str, relative: Path) -> bool:
    parts = relative.parts
    if root_name == "data" and parts[0] in SKIPPED_DATA:
        return False
    if root_name == "data" and parts[0] == "platform" and (
            len(parts) == 1 or parts[1] in SKIPPED_PLATFORM):
        return False
    return not relative.name.endswith(SKIPPED_SUFFIXES)


def _is_sqlite(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _snapshot(source: Path, target: Path) -> str:
    """Copy `source` into `target`: SQLite through its online backup API, the rest as bytes.
    Returns the kind copied."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if _is_sqlite(source):
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
        dst = sqlite3.connect(target)
        try:
            with dst:
                src.backup(dst)
        finally:
            src.close()
            dst.close()
        return "sqlite"
    shutil.copy2(source, target)
    return "file"


def create_backup(settings: Settings, archive: Path) -> BackupReport:
    """Write `archive` (tar.gz, manifest first) of the data and MLflow folders; atomic: a
    failed backup leaves no file at `archive`."""
    started = time.monotonic()
    archive = archive.resolve()
    if archive.exists():
        raise BackupError(f"{archive} exists; pick a new path (a backup never overwrites)")
    archive.parent.mkdir(parents=True, exist_ok=True)
    roots = _roots(settings)
    entries: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=archive.parent, prefix=".backup-") as staging_dir:
        staging = Path(staging_dir)
        for root_name, root in roots.items():
            if not root.is_dir():
                continue
            for source in sorted(p for p in root.rglob("*") if p.is_file()):
                relative = source.relative_to(root)
                if not _wanted(root_name, relative) or staging in source.parents:
                    continue
                name = f"{root_name}/{relative.as_posix()}"
                try:
                    kind = _snapshot(source, staging / name)
                except FileNotFoundError:
                    continue  # removed while we walked (a temporary file)
                except (OSError, sqlite3.Error) as exc:
                    raise BackupError(f"could not copy {source}: {exc}") from exc
                copied = staging / name
                entries.append({"path": name, "kind": kind, "bytes": copied.stat().st_size,
                                "sha256": _sha256(copied)})
        manifest = {"format": FORMAT, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                  time.gmtime()),
                    "config": settings.name, "source": {k: str(v) for k, v in roots.items()},
                    "files": entries}
        partial = archive.with_name(f".{archive.name}.partial")
        with tarfile.open(partial, "w:gz") as tar:
            data = json.dumps(manifest, indent=2).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mtime = len(data), int(time.time())
            tar.addfile(info, io.BytesIO(data))
            for entry in entries:
                tar.add(staging / entry["path"], arcname=entry["path"], recursive=False)
        os.replace(partial, archive)
    total = sum(e["bytes"] for e in entries)
    log.info("backup.created", path=str(archive), files=len(entries), bytes=total)
    return BackupReport(archive, len(entries), total, time.monotonic() - started)


def restore_backup(settings: Settings, archive: Path) -> BackupReport:
    """Restore `archive` into the settings' (empty) data and MLflow folders.

    Every file is checked against the manifest in a staging folder first; a corrupt,
    truncated or partial archive raises BackupError naming the file, and nothing is left in
    the target. Paths recorded in MLflow and the cycle journals move to the new folders."""
    started = time.monotonic()
    archive = archive.resolve()
    if not archive.is_file():
        raise BackupError(f"no archive at {archive}")
    roots = _roots(settings)
    for root in roots.values():
        if root.exists() and any(root.iterdir()):
            raise BackupError(f"{root} is not empty; restore into an empty folder (point "
                              "paths.data_dir and paths.mlruns_dir, or EVOLORA_PATHS__DATA_DIR "
                              "and EVOLORA_PATHS__MLRUNS_DIR, at new folders)")
    base = roots["data"].parent
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=base, prefix=".restore-") as staging_dir:
        staging = Path(staging_dir)
        manifest = _verified_extract(archive, staging)
        for root_name, root in roots.items():
            if (staging / root_name).is_dir():
                root.mkdir(parents=True, exist_ok=True)
                root.rmdir()  # empty (checked above): replaced whole
                shutil.move(str(staging / root_name), root)
    moved = {manifest["source"][name]: str(root) for name, root in roots.items()
             if manifest["source"].get(name) and manifest["source"][name] != str(root)}
    if moved:
        _rewrite_paths(roots, moved)
    files = manifest["files"]
    log.info("backup.restored", path=str(archive), files=len(files))
    return BackupReport(archive, len(files), sum(f["bytes"] for f in files),
                        time.monotonic() - started)


def _verified_extract(archive: Path, staging: Path) -> dict[str, Any]:
    """Extract into `staging`, checking each file's SHA-256 and that none is missing."""
    current = MANIFEST
    manifest: dict[str, Any] | None = None
    expected: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            while (member := tar.next()) is not None:
                current = member.name
                if manifest is None:
                    manifest = _read_manifest(tar, member, archive)
                    expected = {entry["path"]: entry for entry in manifest["files"]}
                    continue
                entry = expected.get(member.name)
                if entry is None or not member.isfile() or member.name in seen:
                    raise BackupError(f"{archive}: {member.name!r} is not in its manifest; "
                                      "the archive was altered")
                target = staging / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                digest = hashlib.sha256()
                source = tar.extractfile(member)
                assert source is not None
                with target.open("wb") as out:
                    while chunk := source.read(CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                if digest.hexdigest() != entry["sha256"]:
                    raise BackupError(f"{archive}: {member.name} does not match its checksum "
                                      "(corrupt archive); nothing was restored")
                seen.add(member.name)
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, BackupError):
            raise
        raise BackupError(f"{archive} is truncated or corrupt: reading {current} failed "
                          f"({exc}); nothing was restored") from None
    if manifest is None:
        raise BackupError(f"{archive} is empty; nothing was restored")
    missing = sorted(set(expected) - seen)
    if missing:
        raise BackupError(f"{archive} is partial: {len(missing)} file(s) of its manifest are "
                          f"missing, the first {missing[0]}; nothing was restored")
    return manifest


def _read_manifest(tar: tarfile.TarFile, member: tarfile.TarInfo,
                   archive: Path) -> dict[str, Any]:
    source = tar.extractfile(member) if member.name == MANIFEST else None
    if source is None:
        raise BackupError(f"{archive} does not start with {MANIFEST}: not an evolora backup")
    manifest = json.loads(source.read())
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{archive} has backup format {manifest.get('format')!r}; this "
                          f"evolora reads format {FORMAT}")
    for entry in manifest["files"]:
        path = Path(entry["path"])
        if path.is_absolute() or ".." in path.parts or path.parts[0] not in ("data", "mlruns"):
            raise BackupError(f"{archive}: unsafe path {entry['path']!r} in its manifest")
    return manifest


def _rewrite_paths(roots: dict[str, Path], moved: dict[str, str]) -> None:
    """Point what MLflow and the journals recorded (absolute artifact locations, model
    version sources, adapter folders) at the restored folders."""
    for db in roots["mlruns"].rglob("*.db"):
        if not _is_sqlite(db):
            continue
        connection = sqlite3.connect(db)
        try:
            with connection:
                tables = [r[0] for r in connection.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table'")]
                for table in tables:
                    columns = [r[1] for r in connection.execute(f'PRAGMA table_info("{table}")')
                               if r[2].upper().startswith(("VARCHAR", "TEXT"))]
                    for column in columns:
                        for old, new in moved.items():
                            connection.execute(
                                f'UPDATE "{table}" SET "{column}" = REPLACE("{column}", ?, ?) '
                                f'WHERE "{column}" LIKE ?', (old, new, f"%{old}%"))
        finally:
            connection.close()
    for journal in (roots["data"] / "cycles").rglob("*.json"):
        text = journal.read_text()
        for old, new in moved.items():
            text = text.replace(old, new)
        journal.write_text(text)
