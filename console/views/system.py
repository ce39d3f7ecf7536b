"""The machine and the service: CPU, RAM, GPU and VRAM; tokens/s and latency from the
service's metrics; each component's health."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from console.client import ConsoleError
from console.state import guarded, mlflow_client, service, settings
from console.system import component_rows, host_stats, human_bytes, parse_metrics


def render() -> None:
    st.title("System")
    st.button("Refresh", key="refresh")
    stats = host_stats()
    cols = st.columns(4)
    cols[0].metric("CPU", f"{stats.cpu_percent:.0f}%", f"{stats.cpu_count} cores",
                   delta_color="off")
    cols[1].metric("RAM", human_bytes(stats.ram_used_bytes),
                   f"of {human_bytes(stats.ram_total_bytes)}", delta_color="off")
    if stats.gpus:
        gpu = stats.gpus[0]
        cols[2].metric(f"GPU {gpu.index}", f"{gpu.utilization_percent:.0f}%", gpu.name,
                       delta_color="off")
        cols[3].metric("VRAM", human_bytes(gpu.memory_used_bytes),
                       f"of {human_bytes(gpu.memory_total_bytes)}", delta_color="off")
        for more in stats.gpus[1:]:
            st.caption(f"GPU {more.index} {more.name}: {more.utilization_percent:.0f}%, "
                       f"{human_bytes(more.memory_used_bytes)} of "
                       f"{human_bytes(more.memory_total_bytes)}")
    else:
        cols[2].metric("GPU", "none", stats.gpu_note, delta_color="off")

    current = settings()
    client = service()
    readiness, down = None, None
    try:
        readiness = client.readiness()
    except ConsoleError as exc:
        down = exc.sentence()
    mlflow_error = None
    try:
        mlflow_client(current).search_experiments(max_results=1)
    except Exception as exc:
        mlflow_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    st.subheader("Components")
    st.dataframe(pd.DataFrame(component_rows(readiness, down, mlflow_error,
                                             current.paths.resolved_tracking_uri)),
                 hide_index=True, width="stretch")
    if readiness is None:
        st.error(down)
        return
    figures = parse_metrics(client.metrics_text())
    st.subheader("The service")
    cols = st.columns(4)
    speed = figures.tokens_per_second
    cols[0].metric("tokens/s (last generation)", f"{speed:.1f}" if speed else "n/a")
    cols[1].metric("tokens generated", f"{figures.generated_tokens:.0f}")
    cols[2].metric("service memory", human_bytes(figures.process_rss_bytes))
    runs = figures.agent_runs
    cols[3].metric("agent runs", f"{sum(runs.values()):.0f}",
                   f"{runs.get('answered', 0):.0f} answered", delta_color="off")
    if figures.latency:
        st.dataframe(pd.DataFrame([
            {"route": route, "requests": int(v["requests"]), "mean ms": 1000 * v["mean_s"],
             "p50 ≤ ms": 1000 * v["p50_s"], "p95 ≤ ms": 1000 * v["p95_s"]}
            for route, v in sorted(figures.latency.items())]),
            hide_index=True, width="stretch")


guarded(render)
