"""A registered adapter version as an Ollama model folder: base GGUF, GGUF LoRA, Modelfile.

    report = export_ollama(client, "evolora-adapter", "champion", base_gguf, out_dir)
    print(report.ollama_command)    # ollama create evolora-adapter-v3 -f .../Modelfile

The folder holds `base.gguf` (a copy of the base), `adapter.gguf` (the version's own GGUF
when it ships a verified one, else converted from its PEFT files), `Modelfile` and
`export.json` (what was written, with sha256s). It is built in a hidden sibling folder and
renamed into place, so a failed export (an adapter the converter refuses, a checksum
mismatch) leaves nothing behind, and an existing export is replaced only when asked.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

from agent.react_format import STOP_SEQUENCE, SYSTEM_PROMPT
from engines.gguf_lora import (
    ADAPTER_GGUF_NAME,
    AdapterConversionError,
    checksum_path,
    convert_adapter,
    verify_checksum,
)
from engines.ollama_modelfile import chat_family, render_modelfile
from evolora.models import sha256_file
from evolora.vocabulary import CHAMPION
from tasks.registry.versions import RegistryError, download_version, get_alias, get_version

BASE_GGUF_NAME = "base.gguf"
MODELFILE_NAME = "Modelfile"
REPORT_NAME = "export.json"
# The agent stops each ReAct step before the tool's Observation, which the caller supplies.
REACT_STOP = STOP_SEQUENCE.strip()


@dataclass(frozen=True)
class ExportedFile:
    """One file of the export: where it is, its size, its sha256."""

    path: Path
    bytes: int
    sha256: str

    @classmethod
    def of(cls, path: Path) -> ExportedFile:
        return cls(path, path.stat().st_size, sha256_file(path))


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote, and the `ollama create` command that imports it."""

    model_name: str
    version: str
    folder: Path
    chat_format: str
    # "registered": the version's own verified adapter.gguf; "converted": made from PEFT.
    adapter_source: str
    ollama_name: str
    files: dict[str, ExportedFile]

    @property
    def ollama_command(self) -> str:
        return f"ollama create {self.ollama_name} -f {self.folder / MODELFILE_NAME}"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["folder"] = str(self.folder)
        data["files"] = {name: {**asdict(file), "path": str(file.path)}
                         for name, file in self.files.items()}
        data["ollama_command"] = self.ollama_command
        return data


def parse_version_ref(ref: str | None) -> str:
    """`None` -> `champion`; `v3` / `3` -> `3`; an alias as it is."""
    if ref is None:
        return CHAMPION
    ref = ref.strip()
    number = ref[1:] if ref[:1] in {"v", "V"} else ref
    if number.isdigit():
        return str(int(number))
    if re.fullmatch(r"[A-Za-z][\w-]*", ref):
        return ref
    raise RegistryError(f"{ref!r} is not a version", "pass a number (3), v3 or an alias "
                        f"({CHAMPION})")


def resolve_version(client: MlflowClient, model_name: str, ref: str | None) -> ModelVersion:
    """The version `ref` names (default: the champion); RegistryError, with a fix, if none."""
    ref = parse_version_ref(ref)
    if ref == CHAMPION and get_alias(client, model_name, CHAMPION) is None:
        raise RegistryError(f"model {model_name!r} has no {CHAMPION} yet",
                            "pass --version N (see `evolora registry list`), or promote one "
                            "with `evolora registry promote N`")
    return get_version(client, model_name, ref)


def ollama_model_name(model_name: str, version: str) -> str:
    """A name `ollama create` accepts: lower case letters, digits, `-`, `_` and `.`."""
    name = re.sub(r"[^a-z0-9._-]+", "-", model_name.lower()).strip("-._") or "evolora"
    return f"{name}-v{version}"


def check_target(out_dir: Path, force: bool) -> None:
    """Refuse a target that is a file, or a non-empty folder unless `force`."""
    if out_dir.exists() and not out_dir.is_dir():
        raise RegistryError(f"{out_dir} exists and is not a folder",
                            "pass --out with a folder path")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise RegistryError(f"{out_dir} already exists and is not empty",
                            "pass --force to replace it, or --out for another folder")


def export_ollama(client: MlflowClient, model_name: str, version_ref: str | None,
                  base_gguf: Path, out_dir: Path, *, force: bool = False,
                  system_prompt: str = SYSTEM_PROMPT) -> ExportReport:
    """Write the Ollama folder for a registered version; returns what was written.

    Raises RegistryError (no such version, no champion, target exists, checksum mismatch),
    ModelfileError (a chat format without an Ollama template) and AdapterConversionError
    (an adapter llama.cpp cannot run: DoRA, modules_to_save, ...), each with its fix.
    """
    base_gguf, out_dir = Path(base_gguf), Path(out_dir)
    # Everything that can be checked without downloading is checked first.
    if not base_gguf.is_file():
        raise RegistryError(f"base GGUF {base_gguf} does not exist",
                            "set model.gguf to the base model's GGUF file")
    family = chat_family(base_gguf)
    version = str(resolve_version(client, model_name, version_ref).version)
    modelfile = render_modelfile(family, system=system_prompt, base=f"./{BASE_GGUF_NAME}",
                                 adapter=f"./{ADAPTER_GGUF_NAME}", extra_stops=[REACT_STOP])
    check_target(out_dir, force)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        adapter_source = _place_adapter(client, model_name, version, base_gguf, staging)
        shutil.copyfile(base_gguf, staging / BASE_GGUF_NAME)
        (staging / MODELFILE_NAME).write_text(modelfile)
        files = {name: ExportedFile.of(staging / name)
                 for name in (BASE_GGUF_NAME, ADAPTER_GGUF_NAME, MODELFILE_NAME)}
        # The report names the files where they will be, after the rename.
        report = ExportReport(
            model_name, version, out_dir, family.name, adapter_source,
            ollama_model_name(model_name, version),
            {name: ExportedFile(out_dir / name, file.bytes, file.sha256)
             for name, file in files.items()})
        (staging / REPORT_NAME).write_text(json.dumps(
            {**report.to_json(), "base_source": str(base_gguf)}, indent=2) + "\n")
        _move_into_place(staging, out_dir, force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report


def _place_adapter(client: MlflowClient, model_name: str, version: str, base_gguf: Path,
                   staging: Path) -> str:
    """Put the version's GGUF LoRA at `staging/adapter.gguf`; returns where it came from."""
    peft_dir = download_version(client, model_name, version, staging / ".peft")
    target = staging / ADAPTER_GGUF_NAME
    shipped = peft_dir / ADAPTER_GGUF_NAME
    if verify_checksum(shipped):
        shutil.copyfile(shipped, target)
        shutil.copyfile(checksum_path(shipped), checksum_path(target))
        source = "registered"
    else:
        try:
            convert_adapter(peft_dir, base_gguf, target)
        except AdapterConversionError as exc:
            # The message names the download folder, which is about to be deleted.
            raise AdapterConversionError(str(exc).replace(
                str(peft_dir), f"version {version} of {model_name!r}")) from None
        source = "converted"
    shutil.rmtree(peft_dir)
    return source


def _move_into_place(staging: Path, out_dir: Path, force: bool) -> None:
    """Rename the finished folder to `out_dir`, replacing an existing one only with force."""
    if not out_dir.exists():
        staging.rename(out_dir)
        return
    check_target(out_dir, force)  # again: it may have been filled while we worked
    old = out_dir.with_name(f".{out_dir.name}-old-{uuid.uuid4().hex[:8]}")
    out_dir.rename(old)
    try:
        staging.rename(out_dir)
    except BaseException:
        old.rename(out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)
