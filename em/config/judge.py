"""Schemas of the ``judge`` group: one dataclass per judge config in ``conf/judge/``.

Each ``conf/judge/<x>.yaml`` starts with ``defaults: [<x>_schema, _self_]``, so Hydra types the ``judge`` node
with the dataclass below: an unknown key (``judge.concurency=3``) or a wrong type fails at composition with one
line naming the key. Range checks live in each ``__post_init__`` (run by :func:`em.config.common.validate`
or :func:`em.judge.factory.build_judges`, before any model or endpoint is touched); the judge constructors do
not check again.

Light on purpose (dataclasses + omegaconf only): imported on the ``--help`` path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from em.config.model import ModelConfig, QuantizationConfig
from em.config.common import require

SCORE_MODES = ("reference", "renormalized")
OPENAI_SCORE_MODES = ("reference", "sampled")  # judge=openai: logprob-weighted, or the mean of sampled replies
# judge.api_key_env holds the NAME of an environment variable; a pasted key is refused without repeating it.
KEY_ENV_MESSAGE = ("must name an environment variable (e.g. OPENAI_API_KEY), not hold the key itself "
                   "(put the key in that variable)")
ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")
SECRET_PREFIXES = ("sk-", "sk_", "hf_", "pk-", "rk-", "ghp_", "gsk_", "xai-")


def looks_like_secret(value: str) -> bool:
    """Does ``value`` (meant as an environment variable's name) look like a key itself?

    True for a known key prefix (``sk-``, ``hf_``, ...; :data:`SECRET_PREFIXES`, case-insensitive) or a value of
    20+ characters without the upper-case-and-underscores shape of an environment variable name
    (:data:`ENV_NAME`). Such a value is never echoed in a message.
    """
    value = str(value).strip()
    return value.lower().startswith(SECRET_PREFIXES) or (len(value) >= 20 and not ENV_NAME.fullmatch(value))


# The reference judge (Betley et al. 2025): the model id written once; configs and docs refer to this name
REFERENCE_JUDGE_MODEL = "gpt-4o-2024-08-06"
BATCH_MAX_REQUESTS = 50_000  # the OpenAI Batch API's limit of requests per batch


@dataclass
class OpenAIEndpointSchema:
    """What every judge behind an OpenAI-compatible endpoint shares (synchronous and Batch API)."""

    name: str = field(default="gpt-4o", metadata={"help": (
        "the judge's name in the responses table (``judge`` column) and summary.json")})
    model: str = field(default=REFERENCE_JUDGE_MODEL, metadata={"help": "the API model id (default: the reference judge)"})
    base_url: Optional[str] = field(default=None, metadata={"help": (
        "null: $OPENAI_BASE_URL, else https://api.openai.com/v1")})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": (
        "the environment variable holding the key (never the key itself)")})
    max_retries: int = field(default=6, metadata={"help": (
        "openai client retries: 429 / 5xx / timeouts / dropped connections")})
    timeout: float = field(default=60.0, metadata={"help": "seconds per HTTP request"})
    top_logprobs: int = field(default=20, metadata={"help": "the reference asks for 20 (the API's maximum)"})
    price_input_per_mtok: Optional[float] = field(default=None, metadata={"help": (
        "USD per million input tokens (dry_run's estimate)")})
    price_output_per_mtok: Optional[float] = field(default=None, metadata={"help": "USD per million output tokens"})

    def __post_init__(self) -> None:
        require(self.max_retries >= 0, "judge.max_retries", f"must be >= 0, got {self.max_retries}")
        require(self.timeout > 0, "judge.timeout", f"must be > 0, got {self.timeout}")
        require(1 <= self.top_logprobs <= 20, "judge.top_logprobs", f"must be in 1..20, got {self.top_logprobs}")
        require(bool(self.api_key_env), "judge.api_key_env", "must name the environment variable that holds the key")
        require(not looks_like_secret(self.api_key_env), "judge.api_key_env", KEY_ENV_MESSAGE)


@dataclass
class OpenAIJudgeSchema(OpenAIEndpointSchema):
    """``judge=openai``: synchronous chat-completions requests (:class:`em.judge.openai_judge.OpenAIJudge`)."""

    _target_: str = field(default="em.judge.openai_judge.OpenAIJudge", metadata={"help": (
        "the judge class Hydra instantiates")})
    concurrency: int = field(default=64, metadata={"help": "requests in flight at once"})
    reply_retries: int = field(default=3, metadata={"help": "malformed replies (bad JSON, no logprobs) asked again"})
    retry_backoff: float = field(default=0.5, metadata={"help": "seconds, doubled per reply retry (with jitter)"})
    max_consecutive_failures: int = field(default=16, metadata={"help": (
        "requests in a row with no answer (timeout / no connection / 502-504, after retries) before the run "
        "stops (answers and judgments kept, exit 2); 0: never stop")})
    score_mode: str = field(default="reference", metadata={"help": (
        "reference: one token at temperature 0, score = logprob-weighted mean (Betley et al.); sampled: for "
        "endpoints without logprobs, n_samples replies at temperature 1, score = their mean "
        "(em.judge.sampled). A sampled judge is named <name>-sampled<k> and cached apart: the two never share "
        "a column.")})
    n_samples: int = field(default=10, metadata={"help": "sampled: replies per prompt (k)"})
    min_parsed: Optional[int] = field(default=None, metadata={"help": (
        "sampled: fewer parsed replies -> unscored; null: ceil(k / 4)")})
    sample_max_tokens: Optional[int] = field(default=16, metadata={"help": (
        "sampled: max_completion_tokens per reply; null: endpoint default")})
    sample_n_per_request: bool = field(default=True, metadata={"help": (
        "sampled: one request with n=k (falls back to k requests if refused)")})

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.concurrency > 0, "judge.concurrency", f"must be > 0, got {self.concurrency}")
        require(self.max_consecutive_failures >= 0, "judge.max_consecutive_failures",
                f"must be >= 0 (0: never stop), got {self.max_consecutive_failures}")
        require(self.reply_retries >= 0, "judge.reply_retries", f"must be >= 0, got {self.reply_retries}")
        require(self.score_mode in OPENAI_SCORE_MODES, "judge.score_mode",
                f"must be one of {OPENAI_SCORE_MODES}, got {self.score_mode!r}")
        require(self.n_samples >= 1, "judge.n_samples", f"must be >= 1, got {self.n_samples}")
        require(self.min_parsed is None or 1 <= self.min_parsed <= self.n_samples, "judge.min_parsed",
                f"must be in 1..judge.n_samples ({self.n_samples}), got {self.min_parsed}")
        require(self.sample_max_tokens is None or self.sample_max_tokens >= 1, "judge.sample_max_tokens",
                f"must be >= 1 or null, got {self.sample_max_tokens}")


@dataclass
class OpenAIBatchJudgeSchema(OpenAIEndpointSchema):
    """``judge=openai_batch``: the OpenAI Batch API (:class:`em.judge.openai_batch.OpenAIBatchJudge`)."""

    _target_: str = field(default="em.judge.openai_batch.OpenAIBatchJudge", metadata={"help": (
        "the judge class Hydra instantiates")})
    batch_poll_s: float = field(default=30.0, metadata={"help": "seconds between batch status polls"})
    batch_max_requests: int = field(default=BATCH_MAX_REQUESTS, metadata={"help": (
        "requests per batch; more are split into several batches")})
    batch_dir: Optional[str] = field(default=None, metadata={"help": (
        "batch state + files; null: <evaluation run dir>/judge_batch/<name>")})

    def __post_init__(self) -> None:
        super().__post_init__()
        require(1 <= self.batch_max_requests <= BATCH_MAX_REQUESTS, "judge.batch_max_requests",
                f"must be in 1..{BATCH_MAX_REQUESTS} (the Batch API's limit), got {self.batch_max_requests}")
        require(self.batch_poll_s > 0, "judge.batch_poll_s", f"must be > 0, got {self.batch_poll_s}")


@dataclass
class LocalJudgeSchema:
    """``judge=local``: a transformers model in-process (:class:`em.judge.local.LocalJudge`).

    ``model`` and ``quantization`` are config nodes of the training stage's groups, composed by the defaults
    list of conf/judge/local.yaml (``model@judge.model=qwen3_32b``, ``quantization@judge.quantization=nf4``).
    """

    _target_: str = field(default="em.judge.local.LocalJudge", metadata={"help": "the judge class Hydra instantiates"})
    name: str = field(default=MISSING, metadata={"help": "conf/judge/local.yaml: the model's name"})
    model: ModelConfig = field(default=MISSING, metadata={"help": "the judge model (a model group node)"})
    quantization: QuantizationConfig = field(default=MISSING, metadata={"help": (
        "how the judge model's weights are stored")})
    cache_dir: Optional[str] = field(default=None, metadata={"help": "where models are cached; null: ~/.cache/em"})
    max_value: int = field(default=100, metadata={"help": "scores are the integers 0..max_value"})
    top_logprobs: int = field(default=20, metadata={"help": "top tokens kept in judge_raw"})
    min_number_mass: float = field(default=0.25, metadata={"help": (
        "below this probability on the integers: unscored (the reference rule)")})
    score_mode: str = field(default="reference", metadata={"help": (
        "reference: the expectation over 0..100 with the min_number_mass rule; renormalized: the expectation "
        "over the exact distribution of 0..100 renormalised to 1, every judgment scored (min_number_mass "
        "off). A label recorded with every score (responses.judge_raw, summary.json "
        "judges.<name>.score_mode).")})

    def __post_init__(self) -> None:
        require(self.score_mode in SCORE_MODES, "judge.score_mode",
                f"must be one of {SCORE_MODES}, got {self.score_mode!r}")
        require(0.0 <= self.min_number_mass <= 1.0, "judge.min_number_mass",
                f"must be in [0, 1], got {self.min_number_mass}")
        # renormalized scores every judgment: another threshold would be silently ignored
        require(self.score_mode == "reference" or self.min_number_mass in (0.0, 0.25), "judge.min_number_mass",
                f"{self.min_number_mass} has no effect under judge.score_mode=renormalized (every judgment is "
                f"scored); add judge.score_mode=reference to apply it")


@dataclass
class EnsembleSchema:
    """``judge=ensemble``: several judges side by side; :func:`em.judge.ensemble.ensemble` returns the list.

    ``judges`` maps a member's key to a judge config (each typed by its own schema); a member set to null is
    dropped.
    """

    _target_: str = field(default="em.judge.ensemble.ensemble", metadata={"help": "the judge class Hydra instantiates"})
    judges: dict[str, Any] = field(default_factory=dict, metadata={"help": (
        "the member judges by name (each a judge node)")})

    def __post_init__(self) -> None:
        require(any(j is not None for j in self.judges.values()), "judge.judges",
                "an ensemble needs at least one judge")
        names = _member_names(self)
        dup = sorted({n for n in names if names.count(n) > 1})
        require(not dup, "judge.judges", f"member names must differ; {dup[0]!r} appears twice (set .name)"
                if dup else "")


def _member_names(ensemble: EnsembleSchema) -> list[str]:
    """The names of an ensemble's judges, nested ensembles flattened (the names the table will carry)."""
    out: list[str] = []
    for member in ensemble.judges.values():
        if isinstance(member, EnsembleSchema):
            out += _member_names(member)
        elif member is not None:
            get = member.get if isinstance(member, dict) else lambda k, m=member: getattr(m, k, None)
            name = str(get("name"))
            if get("score_mode") == "sampled":  # the name it will carry (em.judge.sampled.sampled_name)
                suffix = f"-sampled{get('n_samples')}"
                name = name if name.endswith(suffix) else name + suffix
            out.append(name)
    return out


@dataclass
class NoJudgeSchema:
    """``judge=none``: answers are generated and stored, nothing is judged."""

    _target_: Optional[str] = field(default=None, metadata={"help": "the judge class Hydra instantiates"})


SCHEMAS: dict[str, type] = {
    "openai": OpenAIJudgeSchema,
    "openai_batch": OpenAIBatchJudgeSchema,
    "local": LocalJudgeSchema,
    "ensemble": EnsembleSchema,
    "none": NoJudgeSchema,
}
BY_TARGET: dict[str, type] = {s._target_: s for s in SCHEMAS.values() if s._target_}


def store(cs: ConfigStore) -> None:
    """Register the judge group's schemas in ``cs`` as ``judge/<x>_schema`` (harmless to call twice)."""
    for name, schema in SCHEMAS.items():
        cs.store(group="judge", name=f"{name}_schema", node=schema)


def typed(node: Any) -> Any:
    """A judge config node typed by its schema: an untyped node (built in Python, or resolved to a plain
    container on the way) is merged into the schema of its ``_target_``; ensemble members likewise.

    A node that is already typed, or whose ``_target_`` has no schema here (a judge class of your own), is
    returned as it is.

    Raises:
        ConfigError: (from omegaconf, via the caller's validate) an unknown key or a wrong type.
    """
    if not isinstance(node, DictConfig) or OmegaConf.get_type(node) is not dict:
        return node
    schema = BY_TARGET.get(node.get("_target_"))
    if schema is None:
        return node
    out = OmegaConf.merge(OmegaConf.structured(schema), node)
    if schema is EnsembleSchema:
        for key in list(out.judges):
            out.judges[key] = typed(out.judges[key])
    return out


store(ConfigStore.instance())  # on import: whoever composes conf/judge/*.yaml has the schemas (idempotent)

__all__ = ["EnsembleSchema", "LocalJudgeSchema", "NoJudgeSchema", "OpenAIBatchJudgeSchema", "OpenAIJudgeSchema",
           "OpenAIEndpointSchema", "store", "typed"]
