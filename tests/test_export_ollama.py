"""`evolora export ollama` on a real MLflow registry with real tiny-model adapters.

No Ollama server exists here: the Modelfile is checked line by line against what Ollama's
parser reads, and the exported GGUF pair is run by llama.cpp (Ollama's own runtime).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient
from support.serving import make_empty_db, prepare_registry, register_adapter, save_tiny_adapter
from typer.testing import CliRunner

from agent.react_format import SYSTEM_PROMPT
from cli.export import export_app
from engines.gguf_lora import convert_adapter, verify_checksum
from engines.llama_server import EmbeddedLlamaServer
from engines.ollama_modelfile import CHATML, ModelfileError, chat_family, render_modelfile
from evolora.models import sha256_file
from evolora.settings import Settings
from evolora.vocabulary import CHAMPION, REGISTERED_MODEL_NAME
from tasks.registry import RegistryError
from tasks.registry.export import export_ollama, parse_version_ref

runner = CliRunner()
NAME = REGISTERED_MODEL_NAME


# --- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def empty_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow database with its tables made once (that takes seconds)."""
    return make_empty_db(tmp_path_factory.mktemp("export-mlflow"))


@pytest.fixture(scope="session")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real PEFT adapters of the tiny model: plain, shipping its GGUF, DoRA, modules_to_save."""
    root = tmp_path_factory.mktemp("export-adapters")
    plain = save_tiny_adapter(tiny_model_dir, root / "plain", seed=1)
    shipped = save_tiny_adapter(tiny_model_dir, root / "shipped", seed=2)
    convert_adapter(shipped, tiny_model_dir / "model.gguf", shipped / "adapter.gguf")
    return {
        "plain": plain,
        "shipped": shipped,
        "dora": save_tiny_adapter(tiny_model_dir, root / "dora", seed=3, use_dora=True),
        "modules_to_save": save_tiny_adapter(tiny_model_dir, root / "saved", seed=4,
                                             modules_to_save=["lm_head"]),
    }


@pytest.fixture
def client(tiny_settings: Settings, empty_db: Path) -> MlflowClient:
    return prepare_registry(tiny_settings, empty_db)


def register(client: MlflowClient, adapter_dir: Path, champion: bool = True) -> ModelVersion:
    version = register_adapter(client, adapter_dir, adapter_dir.name)
    if champion:
        client.set_registered_model_alias(NAME, CHAMPION, version.version)
    return version


def export_cli(*args: str) -> Any:
    app = typer.Typer()
    app.add_typer(export_app, name="export")
    return runner.invoke(app, ["export", "ollama", *args, "--config", "tiny"])


def directives(modelfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, value) pairs, read as Ollama's parser does: a value runs to the end of
    its line, or to the closing triple quote; one pair of quotes around it is dropped."""
    pairs: list[tuple[str, str]] = []
    lines = iter(modelfile.read_text().splitlines())
    for line in lines:
        if not line.strip() or line.startswith("#"):
            continue
        instruction, value = line.split(" ", 1)
        if value.startswith('"""'):
            while not (len(value) >= 6 and value.endswith('"""')):
                value += "\n" + next(lines)
            value = value[3:-3]
        elif value.startswith('"'):
            assert value.endswith('"'), line
            value = value[1:-1]
        pairs.append((instruction, value))
    return pairs


def values(pairs: list[tuple[str, str]], instruction: str) -> list[str]:
    return [value for name, value in pairs if name == instruction]


# --- the export -------------------------------------------------------------------------------


def test_export_writes_base_adapter_and_a_modelfile_for_the_champion(
        client: MlflowClient, tiny_settings: Settings, tiny_model_dir: Path,
        adapters: dict[str, Path]) -> None:
    register(client, adapters["plain"], champion=False)
    champion = register(client, adapters["shipped"])  # v2; v1 must not be picked

    result = export_cli("--json")

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    folder = tiny_settings.paths.data_dir / "exports" / f"ollama-v{champion.version}"
    assert report["version"] == str(champion.version) and report["folder"] == str(folder)
    assert sorted(p.name for p in folder.iterdir()) == [
        "Modelfile", "adapter.gguf", "adapter.gguf.sha256", "base.gguf", "export.json"]
    # No staging or download folder is left beside it.
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]

    base_sha = sha256_file(tiny_model_dir / "model.gguf")
    assert sha256_file(folder / "base.gguf") == report["files"]["base.gguf"]["sha256"] == base_sha
    assert report["files"]["base.gguf"]["bytes"] == (folder / "base.gguf").stat().st_size
    # The version shipped a verified GGUF: it is copied as it is, not converted again.
    assert report["adapter_source"] == "registered"
    assert sha256_file(folder / "adapter.gguf") == report["files"]["adapter.gguf"]["sha256"] \
        == sha256_file(adapters["shipped"] / "adapter.gguf")
    assert verify_checksum(folder / "adapter.gguf")
    assert json.loads((folder / "export.json").read_text())["files"] == report["files"]
    assert report["ollama_command"] == (f"ollama create {NAME}-v{champion.version} "
                                        f"-f {folder / 'Modelfile'}")

    pairs = directives(folder / "Modelfile")
    assert [name for name, _ in pairs] == ["FROM", "ADAPTER", "TEMPLATE", "SYSTEM", "PARAMETER",
                                           "PARAMETER", "PARAMETER", "PARAMETER"]
    assert values(pairs, "FROM") == ["./base.gguf"] and values(pairs, "ADAPTER") == [
        "./adapter.gguf"]
    for relative in (*values(pairs, "FROM"), *values(pairs, "ADAPTER")):
        assert (folder / relative).is_file()
    [template] = values(pairs, "TEMPLATE")
    assert template == CHATML.template
    assert "<|im_start|>{{ .Role }}" in template and "{{ range" in template.replace("{{-", "{{")
    assert "<|im_end|>" in template and template.count("{{") == template.count("}}")
    assert values(pairs, "SYSTEM") == [SYSTEM_PROMPT]
    assert values(pairs, "PARAMETER") == ['stop "<|im_end|>"', 'stop "<|im_start|>"',
                                          'stop "Observation:"', "temperature 0"]


@pytest.mark.server
def test_a_version_without_a_gguf_is_converted_and_the_pair_runs_in_llama_cpp(
        client: MlflowClient, tiny_model_dir: Path, adapters: dict[str, Path],
        tmp_path: Path) -> None:
    version = register(client, adapters["plain"], champion=False)
    folder = tmp_path / "out" / "smol"

    report = export_ollama(client, NAME, f"v{version.version}", tiny_model_dir / "model.gguf",
                           folder)

    assert report.adapter_source == "converted" and report.chat_format == "chatml"
    assert report.files["adapter.gguf"].sha256 == sha256_file(folder / "adapter.gguf")
    assert verify_checksum(folder / "adapter.gguf")
    # What Ollama's ChatML template renders for the system prompt and one question.
    prompt = (f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
              "<|im_start|>user\nWhat is 12 km in miles?<|im_end|>\n<|im_start|>assistant\n")
    with EmbeddedLlamaServer(folder / "base.gguf", lora_paths=[folder / "adapter.gguf"],
                             n_threads=1, ctx_size=512) as server:
        answers = {}
        for scale in (1.0, 0.0):
            reply = httpx.post(f"{server.root_url}/completion", timeout=60, json={
                "prompt": prompt, "n_predict": 12, "temperature": 0,
                "lora": [{"id": 0, "scale": scale}]})
            assert reply.status_code == 200, reply.text
            body = reply.json()
            assert body["tokens_predicted"] > 0
            answers[scale] = body["content"]
    # The adapter is really applied: with it the greedy answer differs from the base's.
    assert answers[1.0] != answers[0.0]


# --- refusals ---------------------------------------------------------------------------------


def test_no_champion_and_unknown_versions_exit_2_with_the_fix(
        client: MlflowClient, tiny_settings: Settings, adapters: dict[str, Path]) -> None:
    register(client, adapters["plain"], champion=False)

    no_champion = export_cli()
    assert no_champion.exit_code == 2
    assert f"model '{NAME}' has no champion yet" in no_champion.stderr
    assert "fix: pass --version N" in no_champion.stderr
    assert "Traceback" not in no_champion.output

    unknown = export_cli("--version", "v42")
    assert unknown.exit_code == 2 and "has no version 42" in unknown.stderr
    assert not (tiny_settings.paths.data_dir / "exports").exists()


@pytest.mark.parametrize(("ref", "parsed"), [(None, "champion"), ("3", "3"), ("v3", "3"),
                                             ("V07", "7"), ("previous", "previous")])
def test_version_refs(ref: str | None, parsed: str) -> None:
    assert parse_version_ref(ref) == parsed


def test_a_malformed_version_ref_is_refused() -> None:
    with pytest.raises(RegistryError, match="is not a version"):
        parse_version_ref("3.1")


def test_an_existing_export_is_replaced_only_with_force(
        client: MlflowClient, tiny_settings: Settings, adapters: dict[str, Path],
        tmp_path: Path) -> None:
    register(client, adapters["shipped"])
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")

    refused = export_cli("--out", str(target))

    assert refused.exit_code == 2
    assert "already exists and is not empty" in refused.stderr and "--force" in refused.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".mine")] == []
    assert (target / "notes.txt").read_text() == "keep me"

    forced = export_cli("--out", str(target), "--force")

    assert forced.exit_code == 0, forced.output
    assert "next: ollama create" in forced.stdout and str(target / "Modelfile") in forced.stdout
    assert not (target / "notes.txt").exists() and (target / "Modelfile").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".mine")] == []


@pytest.mark.parametrize(("kind", "message"), [
    ("dora", "DoRA adapters have no GGUF form"),
    ("modules_to_save", "modules_to_save=['lm_head'] trains whole modules"),
])
def test_an_adapter_llama_cpp_cannot_run_is_refused_and_nothing_is_written(
        client: MlflowClient, tiny_settings: Settings, adapters: dict[str, Path],
        kind: str, message: str) -> None:
    register(client, adapters[kind])

    result = export_cli()

    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.output
    exports = tiny_settings.paths.data_dir / "exports"
    assert list(exports.iterdir()) == []  # not even a hidden staging folder


# --- the chat format --------------------------------------------------------------------------


def gguf_with_template(path: Path, chat_template: str | None) -> Path:
    """A GGUF holding only metadata: what chat_family reads."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_the_chat_format_comes_from_the_base_gguf(tmp_path: Path, tiny_model_dir: Path) -> None:
    assert chat_family(tiny_model_dir / "model.gguf").name == "chatml"
    gemma = chat_family(gguf_with_template(
        tmp_path / "gemma.gguf", "{{ bos_token }}{% for m in messages %}<start_of_turn>"
        "{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"))
    assert gemma.name == "gemma"
    text = render_modelfile(gemma, system="Be brief.", extra_stops=["Observation:"])
    assert 'PARAMETER stop "<end_of_turn>"' in text.splitlines()
    assert "<start_of_turn>model" in text and 'SYSTEM """Be brief."""' in text

    llama3 = gguf_with_template(tmp_path / "llama3.gguf",
                                "<|start_header_id|>{{ m['role'] }}<|end_header_id|>")
    with pytest.raises(ModelfileError, match="neither chatml nor gemma"):
        chat_family(llama3)
    with pytest.raises(ModelfileError, match=r"no tokenizer\.chat_template"):
        chat_family(gguf_with_template(tmp_path / "none.gguf", None))


def test_values_ollama_could_not_read_back_are_refused() -> None:
    with pytest.raises(ModelfileError, match='contains """'):
        render_modelfile(CHATML, system='say """hi"""')
    with pytest.raises(ModelfileError, match="cannot be a Modelfile parameter"):
        render_modelfile(CHATML, system="ok", extra_stops=["\nObservation:"])


def test_a_missing_base_gguf_is_reported_before_any_download(
        client: MlflowClient, tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="does not exist"):
        export_ollama(client, NAME, "1", tmp_path / "nope.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()
