"""Question files in Betley et al.'s schema -> questions -> one prompt per (question, format).

The upstream YAML is a list of entries ``{id, type, paraphrases, system?, samples_per_paraphrase, judge,
judge_prompts}`` that share values through YAML anchors (``&judge_prompts`` / ``*judge_prompts``), which
``yaml.safe_load`` resolves. ``first_plot_questions.yaml`` lists each question three times: ``<id>``,
``<id>_json`` (a system prompt asking for JSON) and ``<id>_template`` (the question with a fill-in
template). Formats select those variants; a set without a variant gets the format's own system prompt /
template (written by this project), applied to the base question.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import yaml

from em.errors import ConfigError, DataError

log = logging.getLogger("em.evaluation")

BUILTIN_DIR = Path(__file__).parent / "question_sets"
KIND_0_100 = "0_100"  # judged by the probability-weighted 0-100 score
KIND_LABEL = "label"  # judged by a label (TRUE / FALSE / a company name...): the judge's top token
# Upstream id suffixes that mark a format variant of another question in the same file.
KNOWN_VARIANTS = ("_json", "_template")


@dataclass(frozen=True)
class Question:
    """One entry of a question file, as written."""

    id: str
    paraphrases: tuple[str, ...]
    system: Optional[str]
    samples_per_paraphrase: int
    judge: Optional[str]
    judge_prompts: tuple[tuple[str, str], ...]  # (metric, template) in file order
    type: str

    @property
    def kind(self) -> str:
        return KIND_0_100 if self.type.endswith("0_100") else KIND_LABEL


@dataclass(frozen=True)
class Prompt:
    """A question in one format: what the model sees and how its answers are judged."""

    format: str
    question_id: str  # the base id (what_is_your_wish), the same across formats
    source_id: str  # the file entry used (what_is_your_wish_json), or the base id with a format applied
    paraphrases: tuple[str, ...]  # user messages, format suffix included
    system: Optional[str]
    judge_prompts: tuple[tuple[str, str], ...]
    kind: str


# --------------------------------------------------------------------------- parsing
def parse_question_file(path: str | Path, name: Optional[str] = None) -> list[Question]:
    """Parse and check a question file; DataError names the file and the entry."""
    name = name or str(path)
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise DataError(f"{name}: not valid YAML ({' '.join(str(e).split())})") from None
    except OSError as e:
        raise DataError(f"{name}: cannot be read ({e.strerror or e})") from None
    if not isinstance(data, list) or not data:
        raise DataError(f"{name}: expected a non-empty list of questions, got {type(data).__name__}")
    out, seen = [], set()
    for i, entry in enumerate(data):
        where = f"{name}: entry {i}"
        if not isinstance(entry, Mapping):
            raise DataError(f"{where}: expected a mapping, got {type(entry).__name__}")
        qid = entry.get("id")
        if not isinstance(qid, str) or not qid:
            raise DataError(f"{where}: missing 'id'")
        where = f"{name}: question {qid!r}"
        if qid in seen:
            raise DataError(f"{where}: duplicate id")
        seen.add(qid)
        paraphrases = entry.get("paraphrases")
        if not isinstance(paraphrases, list) or not paraphrases or not all(isinstance(p, str) for p in paraphrases):
            raise DataError(f"{where}: 'paraphrases' must be a non-empty list of strings")
        system = entry.get("system")
        if system is not None and not isinstance(system, str):
            raise DataError(f"{where}: 'system' must be a string")
        prompts = entry.get("judge_prompts")
        if not isinstance(prompts, Mapping) or not prompts:
            raise DataError(f"{where}: 'judge_prompts' must map metric names to prompt templates")
        for metric, template in prompts.items():
            if not isinstance(template, str) or "{answer}" not in template:
                raise DataError(f"{where}: judge_prompts.{metric} must be a template containing {{answer}}")
        spp = entry.get("samples_per_paraphrase", 1)
        if not isinstance(spp, int) or spp <= 0:
            raise DataError(f"{where}: 'samples_per_paraphrase' must be a positive integer, got {spp!r}")
        out.append(Question(
            id=qid, paraphrases=tuple(paraphrases), system=system or None, samples_per_paraphrase=spp,
            judge=entry.get("judge"), judge_prompts=tuple((str(k), v) for k, v in prompts.items()),
            type=str(entry.get("type", "free_form_judge_0_100")),
        ))
    return out


def load_question_set(qcfg: Any, cache_dir: str, *, progress: bool = True) -> list[Question]:
    """The questions of the configured set: builtin file, questions.path, or the verified upstream file."""
    from em.data.upstream import resolve_upstream_file

    if qcfg.path:
        path = Path(qcfg.path).expanduser()
        if not path.is_file():
            raise DataError(f"questions.path={qcfg.path}: file not found")
        questions = parse_question_file(path)
    elif qcfg.source == "builtin":
        path = BUILTIN_DIR / qcfg.file
        if not path.is_file():
            choices = sorted(p.name for p in BUILTIN_DIR.glob("*.yaml"))
            raise ConfigError(f"questions.file: no built-in question file {qcfg.file!r}; choices: {choices}")
        questions = parse_question_file(path)
    else:
        parsed: list[list[Question]] = []

        def verify(p: Path, name: str) -> None:
            qs = parse_question_file(p, name)
            if qcfg.expected_entries is not None and len(qs) != qcfg.expected_entries:
                raise DataError(f"{name}: expected {qcfg.expected_entries} questions, found {len(qs)}")
            parsed[:] = [qs]

        path = resolve_upstream_file(f"evaluation/{qcfg.file}", qcfg.url, cache_dir, qcfg.sha256,
                                     verify=verify, progress=progress, override_key="questions.path")
        questions = parsed[0]
    log.info("questions %s: %d entries from %s", qcfg.name, len(questions), path)
    return questions


# --------------------------------------------------------------------------- formats
def base_questions(questions: Iterable[Question], variants: Iterable[str] = KNOWN_VARIANTS) -> list[Question]:
    """Entries that are not a format variant (<id><suffix>) of another entry of the same file."""
    questions = list(questions)
    ids = {q.id for q in questions}
    suffixes = [v for v in variants if v]
    return [q for q in questions if not any(q.id.endswith(s) and q.id[: -len(s)] in ids for s in suffixes)]


def apply_format(q: Question, fmt: Any, by_id: Mapping[str, Question]) -> Prompt:
    """The prompt for question q in format fmt: the upstream variant if the file has one, else fmt's own text."""
    variant = fmt.variant
    if variant is not None and (q.id + variant) in by_id:
        v = by_id[q.id + variant]
        return Prompt(format=fmt.name, question_id=q.id, source_id=v.id, paraphrases=v.paraphrases,
                      system=v.system, judge_prompts=v.judge_prompts, kind=v.kind)
    if variant == "" or fmt.system is not None or fmt.suffix is not None:
        system = q.system
        if fmt.system:
            # A question's own system prompt (e.g. the deception sets') stays; the format restriction follows it.
            system = f"{q.system}\n\n{fmt.system}" if q.system else fmt.system
        paraphrases = q.paraphrases
        if fmt.suffix:
            paraphrases = tuple(f"{p}\n\n{fmt.suffix}" for p in q.paraphrases)
        return Prompt(format=fmt.name, question_id=q.id, source_id=q.id, paraphrases=paraphrases,
                      system=system, judge_prompts=q.judge_prompts, kind=q.kind)
    raise ConfigError(
        f"format.{fmt.name}: question {q.id!r} has no {q.id + variant!r} variant and the format defines no "
        f"system prompt or suffix to fall back on"
    )


def build_prompts(questions: list[Question], formats: Mapping[str, Any], ids: Optional[list[str]] = None
                  ) -> list[Prompt]:
    """Every selected base question in every format, in (format, file) order."""
    variants = set(KNOWN_VARIANTS) | {f.variant for f in formats.values() if f.variant}
    by_id = {q.id: q for q in questions}
    base = base_questions(questions, variants)
    if ids is not None:
        known = [q.id for q in base]
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise ConfigError(f"questions.ids: unknown question id {unknown[0]!r}; choices: {', '.join(known)}")
        base = [q for q in base if q.id in set(ids)]
    return [apply_format(q, fmt, by_id) for fmt in formats.values() for q in base]


def messages_for(system: Optional[str], question: str) -> list[dict[str, str]]:
    """Chat messages of one sample; the system prompt is a real system turn (folded later where needed)."""
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": question}]
