"""Backup archives on a small real data directory: SQLite copied with the online backup API
while a writer holds it open, every file in the manifest, and restore refusing a corrupt,
partial or truncated archive (naming the file) and a non-empty target."""

from __future__ import annotations

import io
import json
import sqlite3
import tarfile
from pathlib import Path

import pytest

from evolora.settings import Settings, load_settings
from ops.backup import MANIFEST, BackupError, create_backup, restore_backup


def settings_at(root: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("EVOLORA_PATHS__DATA_DIR", str(root / "data"))
    monkeypatch.setenv("EVOLORA_PATHS__MLRUNS_DIR", str(root / "mlruns"))
    return load_settings("tiny")


@pytest.fixture
def source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    settings = settings_at(tmp_path / "src", monkeypatch)
    data, mlruns = Path(settings.paths.data_dir), Path(settings.paths.mlruns_dir)
    (data / "adapters" / "a").mkdir(parents=True)
    (data / "adapters" / "a" / "adapter_model.safetensors").write_bytes(b"\x01" * 5000)
    (data / "models" / "big").mkdir(parents=True)
    (data / "models" / "big" / "weights").write_bytes(b"rebuilt by models prepare")
    (data / "cycles" / "c1").mkdir(parents=True)
    (data / "cycles" / "c1" / "state.json").write_text(json.dumps(
        {"adapter_dir": str(data / "adapters" / "a")}))
    mlruns.mkdir()
    db = sqlite3.connect(mlruns / "mlflow.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE experiments (artifact_location VARCHAR(256))")
    db.execute("INSERT INTO experiments VALUES (?)", (f"file://{mlruns}/artifacts/1",))
    db.commit()
    db.execute("INSERT INTO experiments VALUES ('uncommitted')")  # a writer mid-transaction
    yield settings
    db.close()


def test_a_round_trip_keeps_the_data_moves_the_paths_and_skips_what_is_rebuilt(
        source: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    report = create_backup(source, tmp_path / "b.tar.gz")
    with tarfile.open(report.path) as tar:
        names = tar.getnames()
    assert names[0] == MANIFEST
    assert "data/models/big/weights" not in names
    assert not any(n.endswith(("-wal", "-shm")) for n in names)
    target = settings_at(tmp_path / "dst", monkeypatch)
    restore_backup(target, report.path)
    data, mlruns = Path(target.paths.data_dir), Path(target.paths.mlruns_dir)
    assert (data / "adapters/a/adapter_model.safetensors").read_bytes() == b"\x01" * 5000
    rows = sqlite3.connect(mlruns / "mlflow.db").execute(
        "SELECT artifact_location FROM experiments").fetchall()
    assert rows == [(f"file://{mlruns.resolve()}/artifacts/1",)]  # committed rows, moved
    journal = json.loads((data / "cycles/c1/state.json").read_text())
    assert journal["adapter_dir"] == str(data.resolve() / "adapters" / "a")
    with pytest.raises(BackupError, match="is not empty"):
        restore_backup(target, report.path)


def rewrite(archive: Path, out: Path, drop: str | None = None, flip: str | None = None) -> None:
    with tarfile.open(archive) as src, tarfile.open(out, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            if member.name == drop:
                continue
            if member.name == flip:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            dst.addfile(member, io.BytesIO(data))


def test_corrupt_partial_and_truncated_archives_are_refused_naming_the_file(
        source: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = create_backup(source, tmp_path / "b.tar.gz").path
    target = settings_at(tmp_path / "dst", monkeypatch)
    name = "data/adapters/a/adapter_model.safetensors"
    rewrite(archive, tmp_path / "flipped.tar.gz", flip=name)
    with pytest.raises(BackupError, match=f"{name} does not match its checksum"):
        restore_backup(target, tmp_path / "flipped.tar.gz")
    rewrite(archive, tmp_path / "partial.tar.gz", drop=name)
    with pytest.raises(BackupError, match=f"partial: 1 file.*missing, the first {name}"):
        restore_backup(target, tmp_path / "partial.tar.gz")
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(archive.read_bytes()[:-200])
    with pytest.raises(BackupError, match="truncated or corrupt: reading "):
        restore_backup(target, truncated)
    assert not Path(target.paths.data_dir).exists()
    assert not Path(target.paths.mlruns_dir).exists()
