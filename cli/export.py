"""`evolora export ollama`: a registered adapter as a folder that `ollama create` imports.

Mounted by cli/main.py with `app.add_typer(export_app, name="export")`.
Exit codes: 0 written, 2 an error (cause and fix on stderr).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cli.common import ConfigOption, JsonOption, console, fail
from cli.registry import ModelOption, registry_client, registry_error

export_app = typer.Typer(help="Export registered adapters for other runtimes.",
                         no_args_is_help=True)


@export_app.command("ollama")
def export_ollama_command(
    version: Annotated[str | None, typer.Option(
        "--version", help="A version number (3 or v3) or alias; default: the champion.")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="The folder to write; default: <paths.data_dir>/exports/ollama-v<N>.")
    ] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace the folder if it exists and is not empty.")] = False,
    config: ConfigOption = None, model: ModelOption = None, as_json: JsonOption = False,
) -> None:
    """Write base.gguf, adapter.gguf and a Modelfile for Ollama (the champion by default)."""
    from mlflow.exceptions import MlflowException

    from engines.engine import EngineError, base_gguf_path
    from engines.gguf_lora import AdapterConversionError
    from engines.ollama_modelfile import ModelfileError
    from evolora.models import ModelError, resolve_base_model
    from tasks.registry import RegistryError
    from tasks.registry.export import export_ollama, resolve_version

    settings, client, name = registry_client(config, model)
    try:
        base_gguf = base_gguf_path(
            resolve_base_model(settings.model.base, settings.paths.models_dir),
            settings.model.gguf)
    except (EngineError, ModelError) as exc:
        raise fail(str(exc)) from None
    try:
        # The default folder is named after the version, so resolve it first.
        number = str(resolve_version(client, name, version).version)
        target = out or settings.paths.data_dir / "exports" / f"ollama-v{number}"
        report = export_ollama(client, name, number, base_gguf, target, force=force)
    except (RegistryError, MlflowException) as exc:
        raise registry_error(exc) from None
    except (AdapterConversionError, ModelfileError) as exc:
        # The message already says what to do about it.
        raise fail(str(exc).strip().splitlines()[0]) from None
    if as_json:
        print(json.dumps(report.to_json(), indent=2))
        return
    # Plain lines, not a table: a table would cut the paths and hashes to the terminal width.
    lines = [f"{name} v{report.version} -> {report.folder} ({report.chat_format} template, "
             f"adapter {report.adapter_source})"]
    lines += [f"  {file.path.name:<14} {file.bytes:>14,} bytes  sha256 {file.sha256}"
              for file in report.files.values()]
    lines.append(f"next: {report.ollama_command}")
    console.print("\n".join(lines), highlight=False, soft_wrap=True)
