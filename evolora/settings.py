"""The one settings object: a YAML file from `configs/`, overridden by EVOLORA_* variables.

`load_settings("tiny")` reads `configs/tiny.yaml`; `EVOLORA_TRAIN__RANK=16` overrides
`train.rank` (double underscore between levels). A bad config raises `ConfigError`, whose
message lists every problem at once, each with its key and how to fix it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from evolora.config_errors import (
    ENV_PREFIX,
    describe_env_error,
    describe_validation_errors,
)
from evolora.paths import CONFIGS_DIR, DEFAULT_DATA_DIR, DEFAULT_MLRUNS_DIR, resolve_config_path
from evolora.vocabulary import REGISTERED_MODEL_NAME, CombinationType

DEFAULT_CONFIG_NAME = "default"


class Section(BaseModel):
    """A config section: unknown keys are errors, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class PathsSettings(Section):
    data_dir: Path = Field(DEFAULT_DATA_DIR, description="Prepared models, datasets, adapters.")
    mlruns_dir: Path = Field(DEFAULT_MLRUNS_DIR, description="Local MLflow store folder.")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI; default sqlite:///<mlruns_dir>/mlflow.db."
    )

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def resolved_tracking_uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        return f"sqlite:///{self.mlruns_dir.resolve() / 'mlflow.db'}"

    @property
    def artifact_root(self) -> Path:
        return self.mlruns_dir.resolve() / "artifacts"


class ModelSettings(Section):
    base: str = Field(
        "smollm2-135m",
        min_length=1,
        description="A packaged model name (smollm2-135m, gemma3-270m), a local HF folder, "
        "or a hub id (needs HF_HUB_OFFLINE=0).",
    )
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    max_new_tokens: int = Field(128, gt=0, le=8192)
    threads: int | None = Field(
        None, gt=0, description="CPU threads of the embedded llama.cpp servers (the teacher, "
        "the breeding agents); None: every core.")
    gguf: Path | None = Field(
        None, description="The base model as GGUF, for the llama.cpp engine; None: the packaged "
        "model's own GGUF, or the one .gguf file inside the base folder.")


class TeacherBackend(Section):
    kind: Literal["embedded", "ollama", "openai"]
    url: str | None = Field(None, description="Server URL; the embedded backend picks its own.")
    models: list[str] = Field(default_factory=list, description="Tried in order (fallback).")
    api_key: SecretStr | None = None
    timeout_s: float = Field(60.0, gt=0)
    retries: int = Field(1, ge=0, le=10)

    @model_validator(mode="after")
    def _remote_backends_need_a_url(self) -> TeacherBackend:
        if self.kind in ("ollama", "openai") and not self.url:
            raise ValueError(f"a {self.kind} teacher needs `url` (e.g. http://127.0.0.1:11434)")
        if self.kind in ("ollama", "openai") and not self.models:
            raise ValueError(f"a {self.kind} teacher needs at least one entry in `models`")
        return self


class TeacherSettings(Section):
    enabled: bool = True
    backends: list[TeacherBackend] = Field(
        default_factory=lambda: [TeacherBackend(kind="embedded")]
    )
    temperature: float = Field(0.7, ge=0, le=2)
    embedded_model: str | None = Field(
        None, min_length=1, description="The embedded llama.cpp model (teacher and breeding "
        "agents): a packaged model name or a .gguf path; None: model.base when it is a "
        "packaged model, else smollm2-135m.")


class DataSettings(Section):
    skills: list[str] = Field(
        default_factory=lambda: [
            "arithmetic",
            "units",
            "dates",
            "percent",
            "compound",
            "currency",
        ],
        min_length=1,
    )
    train_per_skill: int = Field(60, gt=0)
    eval_per_skill: int = Field(10, ge=0)
    test_per_skill: int = Field(10, gt=0)
    # Share of hard (two-call) problems in the scored splits: eval (fitness) and the frozen test
    # set, whose spec it is part of.
    hard_fraction: float = Field(0.5, ge=0, le=1)
    # The training split's share, None = `hard_fraction`. Easy problems are learnt in a few
    # dozen steps; the multi-step plans are what a small model needs more examples of.
    train_hard_fraction: float | None = Field(None, ge=0, le=1)
    seed: int = 0
    test_seed: int = 1234
    paraphrase_fraction: float = Field(0.3, ge=0, le=1)
    # Share of train/eval questions whose everyday phrasing is varied by rule (data/wording.py):
    # a small model otherwise learns the templates' words, not the task (never the test split).
    reword_fraction: float = Field(0.8, ge=0, le=1)
    harvest: bool = Field(True, description="Add verified traces from serving to training.")
    harvest_max_rows: int = Field(500, ge=0)
    harvest_max_share: float = Field(0.3, ge=0, le=1, description="Harvested rows' largest "
                                     "share of the training mix.")
    harvest_max_per_user: int = Field(
        50, ge=1, description="Harvested rows one user's traces may give a cycle, so one key "
        "cannot fill the harvested share with its own (self-rated) traces.")
    harvest_users: Literal["all", "none"] | list[str] = Field(
        "all", description="Whose traces may train: all, none, or a list of user ids (an "
        "allow-list: e.g. the team's own keys).")
    continuity_test_per_skill: int = Field(
        0, ge=0, description="A second, older frozen test set still reported beside the main "
        "one, so numbers stay comparable with earlier runs; 0: none.")
    continuity_test_seed: int = 1234
    fresh_train_each_cycle: bool = Field(
        True, description="Each cycle draws its training problems with its own seed "
        "(data.seed + the number of cycles before it): nights learn from new problems.")
    self_problems_per_skill: int = Field(
        0, ge=0, description="Fresh problems per skill the champion attempts each cycle "
        "(STaR): verified attempts become rows, failures keep their program trace; 0: off.")
    self_attempts: int = Field(2, ge=1, le=16, description="Sampled attempts per problem.")
    self_temperature: float = Field(0.7, gt=0, le=2, description="Their sampling temperature.")
    # Largest shares of the mix: the self-attempt pool (own traces and the failures' program
    # traces), earlier cycles' rows replayed (against forgetting), tonight's template rows.
    self_max_share: float = Field(0.3, ge=0, le=1)
    replay_share: float = Field(0.2, ge=0, le=1)
    template_max_share: float = Field(1.0, gt=0, le=1)

    @model_validator(mode="after")
    def _mix_leaves_room_for_templates(self) -> DataSettings:
        others = self.self_max_share + self.harvest_max_share + self.replay_share
        if others >= 1.0:
            raise ValueError(
                f"self_max_share + harvest_max_share + replay_share is {others:.2f}: they must "
                "add up to less than 1, so tonight's template rows keep a share; lower one")
        return self


class TrainSettings(Section):
    rank: int = Field(16, gt=0, le=512)
    alpha: int = Field(32, gt=0)
    # 0 by default: PEFT then skips the dropout copy of every LoRA input, which cost ~30% of
    # a CPU step (7.5 -> 5.2 s at batch 8 on SmolLM2-135M); short runs barely overfit.
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        min_length=1,
    )
    learning_rate: float = Field(1e-3, gt=0, lt=1)
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    continue_lr_scale: float = Field(
        0.3, gt=0, le=1, description="Training that continues an adapter (a night's warm start "
        "from the champion, a fine-tune mutation) peaks at this fraction of learning_rate: at "
        "the full rate a continuation moves as far as the champion's whole training did and "
        "unlearns skills it had (docs/history.md, 2026-12-07).")
    max_steps: int = Field(60, gt=0)
    batch_size: int | None = Field(None, gt=0, description="None: chosen from the memory budget.")
    grad_accum: int | None = Field(None, gt=0)
    max_length: int = Field(320, ge=32)
    quantization: Literal["auto", "none", "nf4", "int8"] = Field(
        "auto", description="auto: NF4 QLoRA on CUDA, plain LoRA on CPU."
    )
    vram_budget_gb: float = Field(4.0, gt=0, description="GPU memory the training may use.")
    vram_safety_margin: float = Field(
        0.1, ge=0, lt=0.5, description="Share of vram_budget_gb the planner keeps free: a plan "
        "is taken only if its estimate (peak reserved memory plus the CUDA context) is at most "
        "(1 - margin) x budget.")
    gradient_checkpointing: bool | None = Field(None, description="None: from the budget.")
    seed: int = 0
    logging_steps: int = Field(5, gt=0)
    fallback_bases: list[str] = Field(
        default_factory=list, description="Lighter base models (packaged names or folders), "
        "tried in order when training runs out of GPU memory at micro-batch 1 with "
        "checkpointing and the shortest max_length; training restarts from step 0 on each.")
    oom_min_max_length: int = Field(
        128, ge=32, description="Out of GPU memory, max_length is halved down to this, no lower.")
    oom_fallback_to_cpu: bool = Field(
        True, description="The last fallback after an out-of-memory error: train on the CPU.")
    fault_oom_steps: list[PositiveInt] = Field(
        default_factory=list, description="Fault injection (tests, drills): raise "
        "torch.cuda.OutOfMemoryError once in each of these optimizer steps (1-based).")


class EvolutionSettings(Section):
    population_size: int = Field(4, ge=2)
    generations: int = Field(2, ge=0)
    elite: int = Field(1, ge=1)
    children_per_generation: int = Field(2, ge=1)
    combination_types: list[CombinationType] = Field(
        default_factory=lambda: ["linear", "cat", "ties", "dare_ties"], min_length=1)
    mutation_std: float = Field(0.01, ge=0, description="Noise mutation strength, relative "
                                "to each LoRA tensor's own std.")
    member_steps: int | None = Field(None, gt=0, description="Training steps of the generalist "
                                     "(and of specialists without specialist_steps); None: "
                                     "train.max_steps.")
    specialists_from_generalist: bool = Field(
        True, description="Specialists continue training the generalist (member 0) on their "
        "skills, so they share one starting point and their mean composes them; false: each "
        "specialist is a fresh LoRA.")
    specialist_steps: int | None = Field(None, gt=0, description="Training steps of each "
                                         "specialist; None: member_steps.")
    specialist_merge: Literal["mean", "ties", "sum"] = Field(
        "mean", description="How generation 1 composes the specialists. mean averages the "
        "whole adapters; ties/sum merge what each learnt since the generalist it continued "
        "(TIES-merging / task arithmetic, tasks.evolve.merge.merge_from_start). On the demo's 135M "
        "specialists mean scored higher in 3 of 5 pairs. Fresh specialists "
        "(specialists_from_generalist: false) always use mean.")
    specialist_merge_weight: float = Field(
        1.0, gt=0, le=2, description="Scale of each specialist's change in a ties/sum merge.")
    specialist_merge_density: float = Field(
        0.5, gt=0, le=1, description="ties: the fraction of each change's largest values kept.")
    # Two at least: training warms up from a learning rate of 0, so one step changes nothing.
    finetune_steps: int = Field(5, ge=2, description="Steps of a continued-training mutation.")
    warm_start: bool = Field(True, description="Start each cycle's generalist from the "
                             "registry's champion (trained on the same base), so nights "
                             "build on each other; false: every cycle starts from the base.")
    trunk: bool = Field(True, description="The nights are one training run (tasks/train/"
                        "trunk.py): the next night continues the generalist's state before "
                        "its decay; false: it continues the decayed champion.")
    trunk_decay_fraction: float = Field(0.25, gt=0, lt=1, description="Share of the "
                                        "generalist's steps that decay into the candidate.")
    use_agents: bool = Field(True, description="AutoGen agents plan each generation; false: "
                             "the genetic-algorithm policy alone.")
    registry_model_name: str = Field(REGISTERED_MODEL_NAME, min_length=1)
    llm_base_url: str | None = Field(
        None, description="OpenAI-compatible endpoint for the breeding agents; None: embedded."
    )
    llm_model: str = "smollm2"
    llm_api_key: SecretStr | None = None
    llm_timeout_s: float = Field(60.0, gt=0)
    promotion_margin: float = Field(0.0, ge=0, le=1)
    regression_tolerance: float = Field(0.1, ge=0, le=1)

    @model_validator(mode="after")
    def _elite_fits_population(self) -> EvolutionSettings:
        if self.elite > self.population_size:
            raise ValueError(
                f"elite ({self.elite}) cannot exceed population_size ({self.population_size}); "
                "lower evolution.elite or raise evolution.population_size"
            )
        return self


# An allowed Host: a name or an IPv4 / bracketed IPv6 address, with an optional port.
_HOST_ENTRY = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?")


class ServingSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, gt=0, lt=65536)
    auth_enabled: bool = True
    engine: Literal["llamacpp", "transformers"] = Field(
        "llamacpp", description="The inference engine of serving AND the cycle's evaluations "
        "(what is scored is what is served): llama.cpp with GGUF LoRA adapters, or "
        "transformers+PEFT, the reference.")
    parallel_slots: int = Field(4, ge=1, le=64, description="llama.cpp decoding slots: "
                                "concurrent requests (and evaluation problems) batch together.")
    slot_context: int = Field(2048, ge=256, le=131072, description="Tokens of context per slot.")
    poll_interval_s: float = Field(30.0, gt=0)
    refused_retry_s: float = Field(
        30.0, gt=0, description="A version that failed to download, verify or load is "
        "refused for this long, then tried again; each further failure doubles the wait.")
    refused_retry_max_s: float = Field(1800.0, gt=0, description="The longest wait before "
                                       "a refused version is tried again.")
    rate_limit_per_minute: int = Field(120, gt=0, description="Requests per minute per key; "
                                       "over it, 429 with Retry-After.")
    token_limit_per_minute: int = Field(
        60_000, gt=0, description="Prompt + completion tokens per minute per key, charged "
        "after each chat completion or agent run (a stream when it ends or the client leaves); "
        "a key whose budget is spent gets 429 with Retry-After until it refills.")
    max_concurrent_per_key: int = Field(
        4, gt=0, le=1024, description="Chat completions and agent runs one key may have in "
        "flight; one more is refused with 429. Released when the response ends, however it "
        "ends (streams included).")
    max_body_bytes: int = Field(1_000_000, gt=0)
    max_prompt_chars: int = Field(8_000, gt=0, description="Characters a request may put in "
                                  "the prompt: the cheap check before rendering; over it, 400.")
    max_prompt_tokens: int = Field(
        1536, gt=0, description="Tokens of the rendered prompt (chat template, tools and ReAct "
        "text applied); over it, 400. Keep it below slot_context, with room for the reply.")
    max_messages: int = Field(64, gt=0, le=10_000, description="Messages in one chat request; "
                              "more is refused with 400.")
    allowed_hosts: list[str] = Field(
        default_factory=list, description="With auth_enabled false: Host (and Origin) names "
        "accepted besides 127.0.0.1, localhost and [::1] on the service's port; `name` for "
        "the service's port, `name:port` for another (an Origin such as a local web UI).")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite in data.")
    oom_retry_after_s: int = Field(5, gt=0, le=3600, description="Retry-After of the 503 "
                                   "answered to a request whose generation ran out of GPU memory.")
    oom_cpu_fallback_after: int = Field(
        3, ge=1, description="Consecutive out-of-memory generations after which the "
        "transformers engine reloads the base on the CPU and serves from there.")
    fault_oom_requests: list[PositiveInt] = Field(
        default_factory=list, description="Fault injection (tests, drills): the engine's "
        "generations with these numbers (1-based, counted from start-up) raise "
        "torch.cuda.OutOfMemoryError.")
    shutdown_grace_s: float = Field(
        5.0, gt=0, le=600, description="On SIGTERM, how long requests in flight may run on; "
        "then they are cancelled and the engine stops: the service is gone within this plus "
        "10 s, whatever it was generating (tests/test_service_shutdown.py).")
    generation_timeout_s: float = Field(
        120.0, gt=0, description="Wall-clock limit of one generation, waiting for the model "
        "included; past it the generation is cancelled at its next token (the llama.cpp slot "
        "is freed) and the request answered with 504 (either engine).")

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts_are_names(cls, hosts: list[str]) -> list[str]:
        bad = [host for host in hosts if not _HOST_ENTRY.fullmatch(host)]
        if bad:
            raise ValueError(f"{', '.join(map(repr, bad))}: an allowed host is a name or "
                             "address with an optional port (myhost, myhost:3000, [::1]:8000), "
                             "without scheme or path")
        return [host.lower() for host in hosts]

    @model_validator(mode="after")
    def _no_open_service_without_auth(self) -> ServingSettings:
        loopback = self.host in {"127.0.0.1", "localhost", "::1"}
        if not self.auth_enabled and not loopback:
            raise ValueError(
                f"auth_enabled is false but host is {self.host!r}: without auth the service "
                "binds to loopback only; set host to 127.0.0.1 or enable auth"
            )
        if self.refused_retry_max_s < self.refused_retry_s:
            raise ValueError(
                f"refused_retry_max_s ({self.refused_retry_max_s}) is below refused_retry_s "
                f"({self.refused_retry_s}); raise it or lower refused_retry_s")
        if self.engine == "llamacpp" and self.max_prompt_tokens >= self.slot_context:
            raise ValueError(
                f"max_prompt_tokens ({self.max_prompt_tokens}) must be below slot_context "
                f"({self.slot_context}): a slot holds the prompt and the reply; lower "
                "max_prompt_tokens or raise slot_context"
            )
        return self


class MemorySettings(Section):
    chroma_path: Path | None = Field(None, description="Embedded store; default in data_dir.")
    chroma_url: str | None = Field(None, description="Use a Chroma server (HttpClient) instead.")
    max_per_user: int = Field(1000, gt=0)
    top_k: int = Field(4, gt=0)


PlatformComponent = Literal["prefect-server", "prefect-worker", "mlflow", "service"]


class PlatformSettings(Section):
    """`evolora up`: which components run under the supervisor, and on which ports."""

    host: str = Field("127.0.0.1", description="Bind address of the Prefect and MLflow "
                      "servers (the service binds to serving.host).")
    prefect_port: int = Field(4200, gt=0, lt=65536)
    mlflow_port: int = Field(5000, gt=0, lt=65536)
    work_pool: str = Field("evolora-local", min_length=1, description="The process work "
                           "pool the worker serves; the deployments in prefect.yaml name it.")
    components: list[PlatformComponent] = Field(
        default_factory=lambda: ["prefect-server", "prefect-worker", "mlflow", "service"],
        description="What `evolora up` runs; a Chroma server joins them when "
        "memory.chroma_url points at this machine.")
    start_retries: int = Field(5, ge=0, le=100, description="Restarts of a component that "
                               "dies while starting (1 s, 2 s, ... apart) before it is FATAL.")
    start_timeout_s: float = Field(180.0, gt=0, description="How long `evolora up` waits for "
                                   "every component to be healthy.")

    @model_validator(mode="after")
    def _loopback_only(self) -> PlatformSettings:
        if self.host not in {"127.0.0.1", "localhost", "::1"}:
            raise ValueError(f"platform.host is {self.host!r}: the Prefect and MLflow servers "
                             "have no authentication; keep them on 127.0.0.1")
        if "prefect-worker" in self.components and "prefect-server" not in self.components:
            raise ValueError("platform.components has prefect-worker without prefect-server: "
                             "the worker needs the server; add prefect-server")
        return self


class Settings(BaseSettings):
    """Everything evolora reads: one YAML file's sections, overridden by EVOLORA_* variables."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    name: str = Field("default", description="The config's name, recorded with every run.")
    paths: PathsSettings = Field(default_factory=PathsSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    teacher: TeacherSettings = Field(default_factory=TeacherSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    evolution: EvolutionSettings = Field(default_factory=EvolutionSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    platform: PlatformSettings = Field(default_factory=PlatformSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init kwargs; the environment must win over it.
        return (env_settings, init_settings)

    def resolved_dict(self) -> dict[str, Any]:
        """The settings as plain JSON-able data, secrets masked: saved beside every artifact."""
        return self.model_dump(mode="json")


class ConfigError(ValueError):
    """A config that cannot be used; the message lists every problem with its fix."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"{len(problems)} problem(s) in config {source}:\n{lines}")


def load_settings(config: str | Path | None = None) -> Settings:
    """Return the settings of a config name or path (default: $EVOLORA_CONFIG or `default`)."""
    config = config or os.environ.get(f"{ENV_PREFIX}CONFIG") or DEFAULT_CONFIG_NAME
    path = resolve_config_path(config)
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml")))
        raise ConfigError(
            str(path),
            [f"file not found; pass a name from configs/ ({names}) or a path to a YAML file"],
        )
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [f"not valid YAML: {exc}"]) from exc
    if not isinstance(raw, dict):
        raise ConfigError(str(path), ["the top level must be a mapping of sections"])
    raw.setdefault("name", path.stem)
    try:
        return Settings(**raw)
    except ValidationError as exc:
        raise ConfigError(str(path), describe_validation_errors(exc)) from None
    except SettingsError as exc:
        # An EVOLORA_* variable that pydantic-settings cannot even parse (a list not in JSON).
        raise ConfigError(str(path), [describe_env_error(exc)]) from None
