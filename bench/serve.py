"""Serving benchmark: the llama.cpp engine through HTTP vs raw xllamacpp vs the old
transformers path, 1 and 4 clients, hot-swap blocking, memory search latency.

    .venv/bin/python bench/serve.py --config demo --adapter data/adapters/champ

Prints ONE JSON object. Every tokens/s figure comes from this one process: the same GGUF,
adapter, prompts and max_tokens, greedy, measured back to back and interleaved so a busy
moment on the machine hits each path. `tokens_per_s_http` is one client on the llama.cpp
service with the champion adapter active (`evolora_raw`: a plain completion, no agent);
`tokens_per_s_llamacpp_raw` is the same base GGUF and adapter GGUF in a bare
`xllamacpp.Server`, called directly (no HTTP, no FastAPI) in a child process;
`tokens_per_s_transformers` is one client on a second service with `serving.engine:
transformers`, started after the first one stopped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evolora.logs import configure_logging
from evolora.models import resolve_base_model
from evolora.settings import ServingSettings, Settings, load_settings
from evolora.vocabulary import CHAMPION

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works, step by step.",
    "Describe a walk through a busy market.",
    "List ten things to pack for a camping trip and say why.",
]


def bench_settings(config: str, root: Path, max_tokens: int | None = None) -> Settings:
    settings = load_settings(config)
    # The service refuses a max_tokens above model.max_new_tokens: allow what is measured.
    max_new = max(settings.model.max_new_tokens, max_tokens or 0)
    base = resolve_base_model(settings.model.base, settings.paths.models_dir)
    serving = ServingSettings(**{**settings.serving.model_dump(), "auth_enabled": False,
                                 "host": "127.0.0.1", "rate_limit_per_minute": 1_000_000,
                                 "token_limit_per_minute": 1_000_000_000,
                                 "max_concurrent_per_key": 1024, "poll_interval_s": 3600})
    return settings.model_copy(update={
        "model": settings.model.model_copy(update={"base": base, "max_new_tokens": max_new}),
        "paths": settings.paths.model_copy(update={"data_dir": root / "data",
                                                   "mlruns_dir": root / "mlruns",
                                                   "tracking_uri": None}),
        "serving": serving,
        "memory": settings.memory.model_copy(update={"max_per_user": 20_000}),
    })


def register_champion(settings: Settings, adapter_dir: Path) -> str:
    """Register `adapter_dir` in the bench's own registry as `champion`; its version."""
    import mlflow

    from evolora.tracking import setup_mlflow
    from tasks.registry import Candidate, register_candidate

    client = setup_mlflow(settings)
    with mlflow.start_run(run_name="bench-serve") as run:
        mlflow.log_artifacts(str(adapter_dir), artifact_path="adapter")
    version = register_candidate(client, Candidate("bench", adapter_dir, run.info.run_id, {},
                                                   {}), settings.evolution.registry_model_name)
    client.set_registered_model_alias(settings.evolution.registry_model_name, CHAMPION,
                                      version.version)
    return str(version.version)


def http_tokens_per_s(url: str, prompts: list[str], max_tokens: int) -> tuple[float, int]:
    tokens = 0
    started = time.perf_counter()
    with httpx.Client(base_url=url, timeout=600) as http:
        for prompt in prompts:
            reply = http.post("/v1/chat/completions", json={
                "model": CHAMPION, "messages": [{"role": "user", "content": prompt}],
                "max_tokens": max_tokens, "temperature": 0, "evolora_raw": True})
            reply.raise_for_status()
            tokens += reply.json()["usage"]["completion_tokens"]
    return tokens / (time.perf_counter() - started), tokens


def raw_llamacpp_tokens_per_s(engine, adapter_gguf: Path | None, prompts: list[str],
                              max_tokens: int, threads: int) -> tuple[float, int]:
    """The same base GGUF (and adapter GGUF at scale 1) in a bare xllamacpp.Server, in a
    child process: a second llama.cpp in this process ran at half speed beside the
    service's, which would flatter the service."""
    spec = {"base": str(engine.base_gguf), "adapter": str(adapter_gguf or ""),
            "prompts": [engine.tokenizer(engine.chat_prompt([{"role": "user", "content": p}]),
                                         add_special_tokens=False)["input_ids"]
                        for p in prompts],
            "max_tokens": max_tokens, "threads": threads, "slots": engine.slots,
            "ctx": engine.slots * engine.slot_context}
    out = subprocess.run([sys.executable, __file__, "--raw-spec", json.dumps(spec)],
                         check=True, capture_output=True, text=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return result["tokens_per_s"], result["tokens"]


def run_raw(spec: dict) -> None:
    """The child's side: load, then time the prompts one by one (prints one JSON line)."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = spec["base"]
    params.n_ctx = spec["ctx"]
    params.n_parallel = spec["slots"]
    params.cpuparams.n_threads = spec["threads"]
    params.cpuparams_batch.n_threads = spec["threads"]
    params.hostnames = ["127.0.0.1"]
    params.port = 0
    params.verbosity = -1
    lora = []
    if spec["adapter"]:
        params.lora_adapters = [xllamacpp.CommonAdapterLoraInfo(spec["adapter"], 0.0)]
        params.lora_init_without_apply = True
        lora = [{"id": 0, "scale": 1.0}]
    server = xllamacpp.Server(params)
    server.handle_completions({"prompt": spec["prompts"][0], "n_predict": 8, "lora": lora})
    tokens = 0
    started = time.perf_counter()
    for prompt in spec["prompts"]:
        reply = server.handle_completions({"prompt": prompt, "n_predict": spec["max_tokens"],
                                           "temperature": 0, "lora": lora})
        tokens += int(reply["usage"]["completion_tokens"])
    print(json.dumps({"tokens": tokens,
                      "tokens_per_s": tokens / (time.perf_counter() - started)}))


def concurrent_tokens_per_s(url: str, prompts: list[str], max_tokens: int,
                            clients: int) -> float:
    totals = [0] * clients

    def client(index: int) -> None:
        totals[index] = http_tokens_per_s(url, prompts, max_tokens)[1]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(totals) / (time.perf_counter() - started)


def memory_search_ms(settings: Settings, memories: int, searches: int) -> dict[str, float]:
    from agent.embeddings import load_embedder
    from agent.memory import MemoryStore

    store = MemoryStore(settings.memory, settings.paths.data_dir / "bench-memory",
                        embedder=load_embedder())
    texts = [f"Note {i}: the user mentioned topic {i % 97} and number {i * 7 % 1000}."
             for i in range(memories)]
    started = time.perf_counter()
    store.add_many("bench-user", texts)
    add_s = time.perf_counter() - started
    timings = []
    for i in range(searches):
        started = time.perf_counter()
        store.search("bench-user", f"what did the user say about topic {i % 97}?")
        timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    return {"memory_search_p50_ms": round(statistics.median(timings), 2),
            "memory_search_p95_ms": round(timings[int(0.95 * (len(timings) - 1))], 2),
            "memory_add_many_s": round(add_s, 1), "memories": store.count("bench-user")}


def swap_block_ms(app, settings: Settings, adapter_dir: Path, swaps: int) -> list[float]:
    """Register the adapter again `swaps` times, moving `champion` each time; the blocking
    each swap cost requests, in ms."""
    loader = app.state.services.loader
    for _ in range(swaps):
        version = register_champion(settings, adapter_dir)
        report = loader.check_now()
        if report["version"] != version:
            raise SystemExit(f"swap to v{version} failed: {report}")
    return [round(record.blocking_s * 1000, 3) for record in loader.swaps[1:]]


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--raw-spec":
        run_raw(json.loads(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", "-c", default="demo")
    parser.add_argument("--requests", type=int, default=4, help="Prompts per measurement.")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--swaps", type=int, default=3)
    parser.add_argument("--memories", type=int, default=10_000)
    parser.add_argument("--searches", type=int, default=50)
    parser.add_argument("--adapter", type=Path, help="An adapter folder to serve as champion "
                        "(default: the base model alone).")
    args = parser.parse_args()
    configure_logging()  # our events to stderr: stdout is the one JSON object

    from evolora.models import cpu_threads
    from serving.app import create_app
    from serving.local_server import running_server

    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.requests)]
    with tempfile.TemporaryDirectory(prefix="evolora-bench-serve-") as folder:
        settings = bench_settings(args.config, Path(folder), args.max_tokens)
        version = register_champion(settings, args.adapter) if args.adapter else None
        llama_app = create_app(settings)
        runs: dict[str, list[tuple[float, int]]] = {"http": [], "raw": [], "old": []}
        # One service at a time: an idle second service (torch's threads, its model) must
        # not share the two cores with the one being measured.
        with running_server(llama_app, timeout_s=600) as url:
            engine = llama_app.state.services.runtime
            adapter = llama_app.state.services.loader.serving[0]
            adapter_gguf = Path(next(iter(engine._gguf.values()))) if engine._gguf else None
            threads = cpu_threads(settings.model.threads)
            http_tokens_per_s(url, prompts[:1], 8)  # first-call allocations
            # Interleaved, twice each, so a busy moment on the machine hits both paths.
            for _ in range(2):
                runs["http"].append(http_tokens_per_s(url, prompts, args.max_tokens))
                runs["raw"].append(raw_llamacpp_tokens_per_s(
                    engine, adapter_gguf, prompts, args.max_tokens, threads))
            multi_tps = concurrent_tokens_per_s(url, prompts, args.max_tokens, args.clients)
            blocks = swap_block_ms(llama_app, settings, args.adapter, args.swaps) \
                if args.adapter else []
        old_settings = settings.model_copy(update={"serving": settings.serving.model_copy(
            update={"engine": "transformers"})})
        with running_server(create_app(old_settings), timeout_s=600) as old_url:
            http_tokens_per_s(old_url, prompts[:1], 8)
            runs["old"].append(http_tokens_per_s(old_url, prompts[:2], args.max_tokens))
        tps = {name: statistics.mean(r for r, _ in found) for name, found in runs.items()}
        result = {
            "config": settings.name, "model": settings.model.base,
            "engine": engine.engine_name, "slots": engine.slots, "threads": threads,
            "requests": args.requests, "max_tokens": args.max_tokens, "adapter": adapter,
            "registry_version": version,
            "tokens_per_s_http": round(tps["http"], 2),
            "tokens_per_s_llamacpp_raw": round(tps["raw"], 2),
            "ratio_vs_llamacpp": round(tps["http"] / tps["raw"], 3),
            f"tokens_per_s_{args.clients}_clients": round(multi_tps, 2),
            "clients_speedup": round(multi_tps / tps["http"], 2),
            "tokens_per_s_transformers": round(tps["old"], 2),
            "speedup_vs_transformers": round(tps["http"] / tps["old"], 2),
            "tokens": {name: sum(t for _, t in found) for name, found in runs.items()},
            "swap_block_ms": blocks,
            "swap_block_ms_max": max(blocks) if blocks else None,
            **memory_search_ms(settings, args.memories, args.searches),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
