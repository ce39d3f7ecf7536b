"""The `evolora` command line: one Typer app, one sub-app per resource."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.common import (
    ConfigOption,
    JsonOption,
    console,
    fail,
    log_to_file,
    run_flow,
    settings_or_exit,
    state,
)
from evolora.logs import configure_logging
from tasks.records import CycleSummary

app = typer.Typer(
    name="evolora",
    help="A self-improving local LLM agent: data, LoRA training, evolution, serving.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="Prepare and list base models (offline, from packaged GGUFs).",
                         no_args_is_help=True)
app.add_typer(models_app, name="models")
from cli.registry import registry_app  # noqa: E402

app.add_typer(registry_app, name="registry")
from cli.export import export_app  # noqa: E402

app.add_typer(export_app, name="export")
from cli.keys import keys_app  # noqa: E402

app.add_typer(keys_app, name="keys")
from cli.serve import serve_command  # noqa: E402

app.command("serve")(serve_command)
from cli.web import console_command  # noqa: E402

app.command("console")(console_command)
from cli.platform import down_command, status_command, up_command  # noqa: E402

app.command("up")(up_command)
app.command("down")(down_command)
app.command("status")(status_command)
from cli.backup import backup_app  # noqa: E402

app.add_typer(backup_app, name="backup")
data_app = typer.Typer(help="Verified synthetic data and the frozen test set.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")

@app.callback()
def main(
    log_json: Annotated[bool, typer.Option("--log-json", help="Log JSON lines.")] = False,
    log_level: Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING.")] = "INFO",
) -> None:
    """evolora: make a small local model better at your work, every night."""
    state.log_json, state.log_level = log_json, log_level.upper()
    try:
        configure_logging(json_output=log_json, level=state.log_level)
    except ValueError as exc:
        raise fail(str(exc), "use --log-level DEBUG, INFO, WARNING or ERROR") from None


@models_app.command("prepare")
def models_prepare(
    name: Annotated[str | None, typer.Argument(help="Packaged model; default: the config's "
                                               "model.base.")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Turn a packaged GGUF into a bf16 Hugging Face folder (idempotent)."""
    from evolora.models import PACKAGED_MODELS, ModelError, prepare_model

    settings = settings_or_exit(config)
    target = name or settings.model.base
    if target not in PACKAGED_MODELS:
        if Path(target).expanduser().is_dir():
            console.print(f"{target} is a local folder: nothing to prepare, it is used as is.")
            return
        raise fail(f"{target!r} is not a packaged model",
                   f"use one of {', '.join(PACKAGED_MODELS)}, or set model.base to a folder")
    try:
        prepared = prepare_model(target, settings.paths.models_dir, settings.model.dtype)
    except ModelError as exc:
        raise fail(str(exc)) from None
    if as_json:
        print(json.dumps(prepared.to_json(), indent=2))
        return
    verb = "already prepared" if prepared.skipped else "prepared"
    print(f"{prepared.name} {verb} at {prepared.path}\n"
          f"  weights sha256 {prepared.weights_sha256}\n"
          f"  source  sha256 {prepared.source_sha256}")


@models_app.command("gguf")
def models_gguf(
    config: ConfigOption = None,
    dtype: Annotated[str, typer.Option("--dtype", help="float32 (exact) or float16.")
                     ] = "float32",
    as_json: JsonOption = False,
) -> None:
    """Write the prepared base back as a full-precision GGUF, for llama.cpp parity."""
    from engines.engine import EngineError, base_gguf_path
    from engines.gguf_base import export_base_gguf
    from engines.gguf_lora import AdapterConversionError
    from evolora.models import ModelError, resolve_base_model

    settings = settings_or_exit(config)
    try:
        model_dir = Path(resolve_base_model(settings.model.base, settings.paths.models_dir))
        source = base_gguf_path(model_dir)  # the GGUF it was prepared from: the tokenizer
        out = export_base_gguf(model_dir, source, model_dir / f"model-{dtype}.gguf", dtype)
    except (ModelError, EngineError, AdapterConversionError) as exc:
        problem, _, fix = str(exc).partition("; ")
        raise fail(problem, fix) from None
    report = {"path": str(out), "bytes": out.stat().st_size, "dtype": dtype,
              "tokenizer_from": str(source)}
    if as_json:
        print(json.dumps(report, indent=2))
        return
    print(f"wrote {out} ({out.stat().st_size / 1e6:.0f} MB, {dtype})\n"
          f"  serve and evaluate on it: set model.gguf: {out}")


@models_app.command("list")
def models_list(
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show packaged models and which are prepared."""
    from evolora.models import PACKAGED_MODELS, list_models

    settings = settings_or_exit(config)
    prepared = {m.name: m for m in list_models(settings.paths.models_dir)}
    if as_json:
        print(json.dumps({
            "prepared": [m.to_json() for m in prepared.values()],
            "packaged": list(PACKAGED_MODELS),
        }, indent=2))
        return
    table = Table("name", "prepared", "size", "weights sha256", "path")
    for name in dict.fromkeys([*PACKAGED_MODELS, *prepared]):
        model = prepared.get(name)
        if model:
            table.add_row(name, "yes", f"{model.size_bytes / 1e6:.0f} MB",
                          model.weights_sha256[:16], str(model.path))
        else:
            table.add_row(name, "no", "", "", f"evolora models prepare {name}")
    console.print(table)


@app.command()
def doctor(
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check Python, packages, device, GPU, RAM, disk, model, MLflow, Prefect and teachers."""
    from cli.doctor import checks_as_json, run_checks

    settings = settings_or_exit(config)
    checks = run_checks(settings)
    if as_json:
        print(json.dumps({"config": settings.name, "checks": checks_as_json(checks)}, indent=2))
    else:
        marks = {"ok": "[green]ok  [/]", "warn": "[yellow]warn[/]", "fail": "[red]fail[/]"}
        console.print(f"evolora doctor (config: {settings.name})")
        for check in checks:
            line = f"{marks[check.status]} {check.name:<18} {check.detail}"
            if check.fix:
                line += f"\n     {'':<18} fix: {check.fix}"
            console.print(line, highlight=False)
    if any(check.status == "fail" for check in checks):
        raise typer.Exit(code=1)


@data_app.command("generate")
def data_generate(
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Generate verified train/eval splits (and the frozen test set, once), log to MLflow."""
    from evolora.tracking import setup_mlflow
    from tasks.data import build_and_log_splits

    settings = settings_or_exit(config)
    log_to_file(settings)
    setup_mlflow(settings)
    try:
        data = build_and_log_splits(settings)
    except ValueError as exc:
        raise fail(str(exc), "check the data section of the config") from None
    if as_json:
        print(data.model_dump_json(indent=2))
        return
    table = Table("split", "rows", "sha256", "path")
    for split in ("train", "eval", "test"):
        table.add_row(split, str(data.rows[split]), data.hashes[split][:16],
                      str(data.path(split)))
    console.print(table)
    report = data.report
    console.print(f"kept per skill: {report.get('kept_per_skill', report)}", highlight=False)


@app.command()
def train(
    config: ConfigOption = None,
    name: Annotated[str, typer.Option("--name", help="The adapter's name.")] = "adapter-0",
    skip_base: Annotated[bool, typer.Option("--skip-base",
                                            help="Do not evaluate the base model.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Run the train-adapter flow: data, one LoRA adapter, test-set scores vs the base."""
    from flows.train_adapter import train_adapter_flow

    settings = settings_or_exit(config)
    summary = run_flow(settings, lambda: train_adapter_flow(
        settings=settings, adapter_name=name, evaluate_base=not skip_base))
    if as_json:
        print(summary.model_dump_json(indent=2))
        return
    print_scores(summary.test)
    console.print(f"adapter: {summary.adapter.adapter_dir}", highlight=False)


@app.command("eval")
def eval_command(
    config: ConfigOption = None,
    adapter: Annotated[str | None, typer.Option(
        "--adapter", help="An adapter name under data/adapters or a folder; default: base.",
    )] = None,
    split: Annotated[str, typer.Option("--split", help="test or eval.")] = "test",
    engine: Annotated[str | None, typer.Option(
        "--engine", help="llamacpp or transformers; default: the config's serving.engine.",
    )] = None,
    as_json: JsonOption = False,
) -> None:
    """Evaluate the base model or an adapter on the frozen test set, logged to MLflow."""
    from engines.engine import EngineError
    from engines.transformers_runtime import AdapterError
    from evolora.models import ModelError, resolve_base_model
    from evolora.tracking import setup_mlflow
    from tasks.data import build_and_log_splits, load_split
    from tasks.evaluate import evaluate_adapters

    settings = settings_or_exit(config)
    log_to_file(settings)
    if split not in ("test", "eval"):
        raise fail(f"unknown split {split!r}", "use --split test or --split eval")
    if engine is not None:
        if engine not in ("llamacpp", "transformers"):
            raise fail(f"unknown engine {engine!r}", "use --engine llamacpp or transformers")
        settings = settings.model_copy(update={"serving": settings.serving.model_copy(
            update={"engine": engine})})
    adapter_dir = None
    if adapter:
        adapter_dir = Path(adapter).expanduser()
        if not adapter_dir.is_dir():
            adapter_dir = settings.paths.data_dir / "adapters" / adapter
        if not (adapter_dir / "adapter_config.json").is_file():
            raise fail(f"no adapter at {adapter!r} (looked in {adapter_dir})",
                       "pass a folder with adapter_config.json or a name from data/adapters")
    try:
        model_path = resolve_base_model(settings.model.base, settings.paths.models_dir)
    except ModelError as exc:
        raise fail(str(exc)) from None
    setup_mlflow(settings)
    data = build_and_log_splits(settings)
    rows = list(load_split(data.path(split)))
    candidate = adapter_dir.name if adapter_dir is not None else "base"
    try:
        result = evaluate_adapters(settings, model_path, rows, {candidate: adapter_dir},
                                   split=split)[candidate]
    except EngineError as exc:
        problem, _, fix = str(exc).partition("; ")
        raise fail(problem, fix) from None
    except (AdapterError, ValueError, OSError) as exc:
        if adapter_dir is None:
            raise
        raise fail(f"adapter {adapter_dir} does not load: {exc}") from None
    if as_json:
        print(json.dumps(result.summary(), indent=2))
        return
    print_scores({candidate: result.metrics}, split)


def print_scores(scores: dict[str, dict[str, float]], split: str = "test") -> None:
    """A table of accuracy per candidate: overall, per level, then per skill x level."""
    prefix = f"{split}_accuracy"
    keys = sorted({k for metrics in scores.values() for k in metrics if k.startswith(prefix)},
                  key=lambda k: (k.count("_"), k))
    table = Table("metric", *scores)
    for key in keys:
        label = key.removeprefix(prefix).lstrip("_") or "overall"
        table.add_row(label, *(f"{scores[c].get(key, float('nan')):.2f}" for c in scores))
    console.print(table)


@app.command()
def cycle(
    config: ConfigOption = None,
    new: Annotated[bool, typer.Option("--new", help="Start a new cycle even if the last one "
                                      "did not finish (default: resume it).")] = False,
    summary_path: Annotated[Path | None, typer.Option(
        "--summary", help="Where to write the summary JSON; default mlruns/last-cycle.json.",
    )] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    nights: Annotated[int, typer.Option(
        "--nights", min=1, max=100, help="Run this many consecutive cycles, as the nightly "
        "schedule would (each starts from the last one's champion), and write "
        "mlruns/nights.json with the champion after each.")] = 1,
) -> None:
    """Run one self-improvement cycle: data, population, evolution, promotion gate."""
    from flows.cycle import cycle_flow
    from flows.nights import NightsRecord

    settings = settings_or_exit(config)
    record = NightsRecord(settings.paths.mlruns_dir / "nights.json") if nights > 1 else None
    for night in range(nights):
        started = time.perf_counter()
        fresh = new or night > 0
        summary = run_flow(settings, lambda fresh=fresh: cycle_flow(settings=settings,
                                                                    new=fresh))
        target = summary_path or settings.paths.mlruns_dir / "last-cycle.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(summary.model_dump_json(indent=2))
        if record is not None:
            record.add(summary, wall_s=time.perf_counter() - started)
        if as_json:
            print(summary.model_dump_json(indent=2))
            continue
        print_cycle_summary(summary)
        console.print(f"summary written to {target}", highlight=False)
    if record is not None and not as_json:
        console.print(f"{nights} nights: champion after each "
                      f"{', '.join(f'{c.champion:.3f}' for c in record.cycles)}; written to "
                      f"{record.path}", highlight=False)


def print_cycle_summary(summary: CycleSummary) -> None:
    """The demo's table: base, best initial, each generation's best, challenger, champion,
    then the paired comparisons behind them."""
    table = Table("candidate", "split", "accuracy", "hard level", "note")

    def row(label: str, split: str, accuracy: float, hard: float, note: str = "") -> None:
        table.add_row(label, split, f"{accuracy:.3f}", f"{hard:.3f}", note)

    row("base model", "test", summary.base, summary.base_hard)
    row(f"best initial ({summary.best_initial_id})", "eval", summary.best_initial,
        summary.best_initial_hard, f"from {summary.started_from or 'the base'}")
    for gen in summary.generations:
        row(f"generation {gen.generation} best ({gen.best_id})", "eval", gen.best_fitness,
            gen.best_fitness_hard, f"planned by: {gen.policy}")
    verdict = "promoted" if summary.promoted else "refused: " + "; ".join(summary.gate_reasons)
    row(f"challenger ({summary.challenger_id})", "test", summary.challenger,
        summary.challenger_hard, f"registry v{summary.registry_version}, {verdict}")
    row(f"champion (registry v{summary.champion_version})", "test", summary.champion,
        summary.champion_hard, f"{summary.test_problems} problems")
    console.print(table)
    for label, text in summary.comparisons.items():
        console.print(f"{label}: {text}", highlight=False)
    console.print(f"challenger {summary.challenger_reason}", highlight=False)
    if summary.self_yield is not None:
        console.print(f"the champion solved {summary.self_yield:.0%} of its fresh problems; "
                      f"training mix {summary.mix_rows}", highlight=False)
    console.print(f"evolution moved eval accuracy by {summary.evolution_gain:+.3f} overall "
                  f"and {summary.evolution_gain_hard:+.3f} on the hard level (best initial -> "
                  f"challenger); {summary.train_steps} training steps; wall "
                  f"{summary.wall_s:.0f} s", highlight=False)


@app.command("config")
def show_config(config: ConfigOption = None) -> None:
    """Print the resolved settings (YAML + EVOLORA_* variables) as JSON, secrets masked."""
    settings = settings_or_exit(config)
    print(json.dumps(settings.resolved_dict(), indent=2))


if __name__ == "__main__":
    app()
