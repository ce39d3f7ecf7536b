"""What the app's lifespan loads: the model, the stores, the adapter hot-loader."""

from __future__ import annotations

import time

from mlflow.tracking import MlflowClient

from agent.embeddings import load_embedder
from agent.memory import MemoryStore
from engines.engine import open_engine
from evolora.logs import get_logger
from evolora.models import resolve_base_model
from serving.agent_runs import reconcile_memories
from serving.deps import Services
from serving.hot_loader import AdapterHotLoader
from serving.metrics import ScrapeTimeCollector
from storage.store import Store

log = get_logger(__name__)


def open_services(services: Services) -> None:
    """Load everything the routes need into `services` (blocking; seconds)."""
    settings = services.settings
    started = time.perf_counter()
    model_path = resolve_base_model(settings.model.base, settings.paths.models_dir)
    services.runtime = open_engine(settings, model_path)
    services.store = Store.from_settings(settings)
    services.memory = MemoryStore(settings.memory, settings.paths.data_dir,
                                  embedder=load_embedder())
    # A crash between an agent run's commit and its Chroma write left its memory pending.
    reconcile_memories(services.store, services.memory)
    services.metrics.add_scrape_collector(ScrapeTimeCollector(services.memory.count))
    tracking_uri = settings.paths.resolved_tracking_uri
    if tracking_uri.startswith("sqlite:///"):
        settings.paths.mlruns_dir.mkdir(parents=True, exist_ok=True)
    services.loader = AdapterHotLoader(
        services.runtime, lambda: MlflowClient(tracking_uri=tracking_uri),
        settings.evolution.registry_model_name,
        settings.paths.data_dir / "serving" / "adapters", services.metrics,
        poll_interval_s=settings.serving.poll_interval_s,
        retry_backoff_s=settings.serving.refused_retry_s,
        retry_backoff_max_s=settings.serving.refused_retry_max_s)
    services.loader.start()
    adapter, version = services.loader.serving
    log.info("serving.ready", model=model_path, engine=services.runtime.engine_name,
             adapter=adapter, version=version,
             seconds=round(time.perf_counter() - started, 2))
