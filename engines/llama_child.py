"""The child process of an isolated `EmbeddedLlamaServer` (engines/llama_server.py), and
the server parameters both build from one spec.

    python -m engines.llama_child '<child_spec JSON>'

Loads the model (xllamacpp holds the GIL meanwhile: here it holds only this process's),
prints the listening address on stdout, then serves until its stdin closes: the parent
stopped it, or died. It imports nothing but xllamacpp, so it starts in ~0.2 s.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def server_params(spec: dict[str, Any]) -> Any:
    """xllamacpp.CommonParams for a `child_spec`."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = spec["model"]
    params.hostnames = [spec["host"]]
    # Port 0: the OS picks a free port at bind time, so no other process can race us to it.
    params.port = spec["port"]
    params.model_alias = {spec["alias"]}
    params.n_ctx = spec["n_ctx"]
    params.n_parallel = spec["n_parallel"]
    params.cpuparams.n_threads = spec["n_threads"]
    params.cpuparams_batch.n_threads = spec["n_threads"]
    if spec["lora"]:
        params.lora_adapters = [xllamacpp.CommonAdapterLoraInfo(path, 0.0)
                                for path in spec["lora"]]
        params.lora_init_without_apply = True
    params.ui = False
    params.offline = True  # never let llama.cpp reach for a hub
    # -1 silences llama.cpp's C-level logging, which would otherwise flood stderr.
    params.verbosity = 3 if spec["verbose"] else -1
    return params


def main() -> None:
    import xllamacpp

    server = xllamacpp.Server(server_params(json.loads(sys.argv[1])))
    print(str(server.listening_address), flush=True)
    sys.stdin.read()  # returns at EOF
    del server


if __name__ == "__main__":
    main()
