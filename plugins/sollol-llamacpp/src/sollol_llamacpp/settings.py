"""The ``[llamacpp]`` settings section: RPC workers and llama-server nodes to use, binaries,
models available for sharding, coordinators."""

from __future__ import annotations

from attrs import field, frozen
from attrs.validators import optional

from sollol_core.config import (
    Flag,
    SettingsSection,
    addresses,
    fraction,
    not_negative,
    one_of,
    positive,
)


@frozen
class LlamacppSettings:
    """llama.cpp (``[llamacpp]``)."""

    #: RPC workers (``rpc-server``, "host:port", default port 50052) to shard over.
    rpc_backends: tuple[str, ...] = field(default=(), validator=addresses(50052))
    #: llama-server processes that run a model whole (default port 8080).
    servers: tuple[str, ...] = field(default=(), validator=addresses(8080))
    #: Directory holding llama-server and the RPC worker; searched before PATH and the cache.
    bin_dir: str = ""
    #: Models a coordinator can load: name -> GGUF path (besides the local Ollama store).
    models: dict[str, str] = field(factory=dict)
    #: Models always sharded over RPC workers, even when a node could hold them whole.
    shard: tuple[str, ...] = ()
    coordinator_timeout_s: float = field(default=120.0, validator=positive)
    #: A coordinator unused this long is stopped and its workers freed.
    idle_unload_s: float = field(default=600.0, validator=positive)
    context_size: int = field(default=4096, validator=positive)
    #: Layers a coordinator offloads to its RPC workers and GPUs (llama-server's ``-ngl``); the
    #: rest run on the coordinator's own CPU. 99: all of them.
    gpu_layers: int = field(default=99, validator=not_negative)
    parallel: int = field(default=2, validator=positive)
    #: RPC workers to start on this machine with the router (0: use only the ones named).
    local_workers: int = field(default=0, validator=not_negative)
    #: With ``local_workers`` and no llama.cpp binaries anywhere, build them (as ``sollol
    #: llamacpp install`` does: minutes, once, with progress) instead of failing.
    install_if_missing: bool = False
    #: RPC workers the router asks each agent (``discovery.agents``) to run while it runs.
    agent_workers: int = field(default=0, validator=not_negative)
    #: Workers a split uses at the least when that many are free (a split over one is no split).
    min_shard_workers: int = field(default=2, validator=positive)
    #: Models with at least this many billion parameters (30: 30B, as the seed guide writes it)
    #: are sharded even if a node holds them whole.
    distributed_threshold_params: float | None = field(default=None, validator=optional(positive))
    #: How layers are split: in proportion to free memory, or evenly.
    layer_strategy: str = field(default="memory_aware", validator=one_of("memory_aware", "even"))
    #: Room kept free when deciding that a model fits a node whole (0.1: it needs 110 % of its
    #: estimate free on that node); nodes whose free memory nobody measured are trusted.
    memory_margin: float = field(default=0.1, validator=fraction)


SECTION = SettingsSection(
    name="llamacpp",
    type=LlamacppSettings,
    environment={
        "SOLLOL_RPC_BACKENDS": "rpc_backends",
        "RPC_BACKENDS": "rpc_backends",
        "SOLLOL_LLAMACPP_SERVERS": "servers",
        "SOLLOL_LLAMACPP_BIN_DIR": "bin_dir",
        "SOLLOL_SHARD_MODELS": "shard",
        "SOLLOL_COORDINATOR_TIMEOUT": "coordinator_timeout_s",
        "SOLLOL_IDLE_UNLOAD": "idle_unload_s",
        "SOLLOL_LOCAL_WORKERS": "local_workers",
        "SOLLOL_INSTALL_LLAMACPP": "install_if_missing",
        "SOLLOL_AGENT_WORKERS": "agent_workers",
        "SOLLOL_MIN_SHARD_WORKERS": "min_shard_workers",
        "SOLLOL_LAYER_STRATEGY": "layer_strategy",
        "SOLLOL_DISTRIBUTED_THRESHOLD_PARAMS": "distributed_threshold_params",
        "SOLLOL_GPU_LAYERS": "gpu_layers",
        # llama-server's own variable, as the guide sets it: SOLLOL passes -ngl explicitly,
        # which would override it in llama-server, so SOLLOL reads it instead
        "LLAMA_ARG_N_GPU_LAYERS": "gpu_layers",
    },
    moved={"discovery.rpc_backends": "rpc_backends", "discovery.llamacpp_servers": "servers"},
    flags=(Flag("--rpc-backend", "rpc_backends",
                "Also use this llama.cpp RPC worker (repeatable).", metavar="HOST:PORT"),),
)
