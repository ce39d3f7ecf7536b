"""Serving benchmark: HTTP vs direct generation tokens/s, 4 clients, memory search latency.

    .venv/bin/python bench/serve.py --config demo --requests 4 --max-tokens 48

Prints ONE JSON object. The HTTP and direct numbers come from the same process and model,
the same prompts, max_tokens and adapter (the base model: the bench's registry is empty),
greedy, measured back to back, so `ratio` is the serving overhead.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evolora.models import resolve_base_model
from evolora.settings import ServingSettings, Settings, load_settings
from evolora.vocabulary import CHAMPION

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a bicycle works, step by step.",
    "Describe a walk through a busy market.",
    "List ten things to pack for a camping trip and say why.",
]


def bench_settings(config: str, root: Path) -> Settings:
    settings = load_settings(config)
    base = resolve_base_model(settings.model.base, settings.paths.models_dir)
    serving = ServingSettings(**{**settings.serving.model_dump(), "auth_enabled": False,
                                 "host": "127.0.0.1", "rate_limit_per_minute": 1_000_000,
                                 "poll_interval_s": 3600})
    return settings.model_copy(update={
        "model": settings.model.model_copy(update={"base": base}),
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
                "max_tokens": max_tokens, "temperature": 0})
            reply.raise_for_status()
            tokens += reply.json()["usage"]["completion_tokens"]
    return tokens / (time.perf_counter() - started), tokens


def generate_tokens_per_s(runtime, adapter: str, prompts: list[str], max_tokens: int
                          ) -> tuple[float, int]:
    tokens = 0
    started = time.perf_counter()
    for prompt in prompts:
        text = runtime.chat_prompt([{"role": "user", "content": prompt}])
        with runtime.lock:
            runtime.use(adapter)
            reply = runtime.generate([text], max_new_tokens=max_tokens)[0]
        tokens += len(runtime.tokenizer(reply, add_special_tokens=False)["input_ids"])
    return tokens / (time.perf_counter() - started), tokens


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", "-c", default="demo")
    parser.add_argument("--requests", type=int, default=4, help="Prompts per measurement.")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--memories", type=int, default=10_000)
    parser.add_argument("--searches", type=int, default=50)
    parser.add_argument("--adapter", type=Path, help="An adapter folder to serve as champion "
                        "(default: the base model alone).")
    args = parser.parse_args()

    from serving.app import create_app
    from serving.local_server import running_server

    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.requests)]
    with tempfile.TemporaryDirectory(prefix="evolora-bench-serve-") as folder:
        settings = bench_settings(args.config, Path(folder))
        version = register_champion(settings, args.adapter) if args.adapter else None
        app = create_app(settings)
        with running_server(app, timeout_s=600) as url:
            runtime = app.state.services.runtime
            adapter = app.state.services.loader.serving[0]
            http_tokens_per_s(url, prompts[:1], 8)  # warm-up: first-call allocations
            # Interleaved, twice each, so a busy moment on the machine hits both paths.
            http_runs, gen_runs = [], []
            for _ in range(2):
                http_runs.append(http_tokens_per_s(url, prompts, args.max_tokens))
                gen_runs.append(generate_tokens_per_s(runtime, adapter, prompts,
                                                      args.max_tokens))
            http_tokens = sum(t for _, t in http_runs)
            gen_tokens = sum(t for _, t in gen_runs)
            http_tps = statistics.mean(r for r, _ in http_runs)
            gen_tps = statistics.mean(r for r, _ in gen_runs)
            multi_tps = concurrent_tokens_per_s(url, prompts, args.max_tokens, args.clients)
        result = {
            "config": settings.name, "model": settings.model.base,
            "dtype": settings.model.dtype, "requests": args.requests,
            "max_tokens": args.max_tokens, "adapter": adapter, "registry_version": version,
            "tokens_per_s_http": round(http_tps, 2),
            "tokens_per_s_generate": round(gen_tps, 2),
            "ratio": round(http_tps / gen_tps, 3),
            "tokens_http": http_tokens, "tokens_generate": gen_tokens,
            f"tokens_per_s_{args.clients}_clients": round(multi_tps, 2),
            **memory_search_ms(settings, args.memories, args.searches),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
