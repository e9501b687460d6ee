"""The OpenAI Batch API mode of :class:`~em.judge.openai_judge.OpenAIJudge` (``judge.batch_api=true``, half price).

Every request the cache does not hold becomes one line of a JSONL file (``custom_id`` = the request's cache
key, ``POST /v1/chat/completions``, the same body as the synchronous path), uploaded with
``files.create(purpose="batch")`` and submitted with ``batches.create(completion_window="24h")``. The batch id is
recorded in ``<batch_dir>/batches.json`` *before* polling starts, so a killed or restarted run re-attaches to
the batch it already paid for instead of submitting a second one. ``batches.retrieve`` is polled every
``judge.batch_poll_s`` seconds (a progress bar shows the batch's request counts); then the output file and the
error file are downloaded (kept next to the state file) and each line is scored by exactly the code the
synchronous path uses (:func:`~em.judge.openai_judge.judgment_from_reply`). Error lines, a failed / expired /
cancelled batch and requests missing from the output become unscored judgments with the reason (not cached, so
the next run asks again), never a made-up score.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from em.errors import JudgeError
from em.judge.base import OnResult
from em.judge.cache import cache_key
from em.judge.scoring import Judgment, JudgeRequest

if TYPE_CHECKING:
    from em.judge.openai_judge import OpenAIJudge

log = logging.getLogger("em.judge")

ENDPOINT = "/v1/chat/completions"
TERMINAL = ("completed", "failed", "expired", "cancelled")
STATE_FILE = "batches.json"
MAX_LINES = 50_000  # the Batch API's limits per batch: 50,000 requests, a 200 MB input file
MAX_BYTES = 190_000_000


def custom_id(judge: "OpenAIJudge", req: JudgeRequest) -> str:
    """Stable per request: the cache key (judge identity + prompt + kind), as the runner computes it."""
    return cache_key(judge.identity, req.prompt + "\x00" + req.kind)


def batch_dir(judge: "OpenAIJudge") -> Path:
    if judge.batch_dir:
        return Path(judge.batch_dir).expanduser()
    if judge.run_dir is None:
        raise JudgeError(f"judge {judge.name}: judge.batch_api=true needs a directory for its batch state "
                         f"(set judge.batch_dir, or run it from an evaluation, which uses <run_dir>/judge_batch)")
    return Path(judge.run_dir) / "judge_batch" / judge.name


class BatchState:
    """``batches.json``: every batch this judge submitted from this directory, with its custom_ids."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.path = directory / STATE_FILE
        self.batches: list[dict[str, Any]] = []
        if self.path.is_file():
            try:
                self.batches = json.loads(self.path.read_text())["batches"]
            except (ValueError, KeyError, TypeError) as e:
                raise JudgeError(f"judge batch state {self.path} is unreadable ({e}); move it away to start over "
                                 f"(a batch it names may still be running and billed)") from None

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"batches": self.batches}, indent=1))
        os.replace(tmp, self.path)  # atomic: a kill never leaves half a state file


def run_batch(judge: "OpenAIJudge", requests: list[JudgeRequest], on_result: OnResult, progress: bool) -> None:
    from openai import OpenAI

    directory = batch_dir(judge)
    directory.mkdir(parents=True, exist_ok=True)
    state = BatchState(directory)
    ids: dict[str, list[int]] = {}
    for i, r in enumerate(requests):
        ids.setdefault(custom_id(judge, r), []).append(i)
    kinds = {cid: requests[ix[0]].kind for cid, ix in ids.items()}
    emitted: set[str] = set()

    def emit(cid: str, judgment: Judgment) -> None:
        if cid in emitted or cid not in ids:
            return
        emitted.add(cid)
        for i in ids[cid]:
            on_result(i, judgment)

    client = OpenAI(api_key=os.environ[judge.api_key_env], base_url=judge.base_url,
                    max_retries=judge.max_retries, timeout=judge.timeout)
    try:
        # 1. batches submitted earlier from this directory: reuse their saved answers, re-attach to running ones
        for rec in state.batches:
            need = [c for c in rec["custom_ids"] if c in ids and c not in emitted]
            if not need:
                continue
            if rec.get("done"):
                # Finished earlier (its answers are normally in the cache already): reuse its good lines; a
                # request that failed there goes into a new batch below.
                for cid, j in _read_saved(directory, rec, kinds).items():
                    if j.final:
                        emit(cid, j)
                continue
            log.info("judge %s: re-attaching to batch %s (%d requests)", judge.name, rec["id"], len(need))
            _finish(judge, client, state, rec, kinds, emit, progress)

        # 2. everything else: new batches (one unless the API's per-batch limits split it), all submitted
        # and recorded before any waiting
        new = [cid for cid in ids if cid not in emitted]
        lines = {cid: json.dumps({"custom_id": cid, "method": "POST", "url": ENDPOINT,
                                  "body": judge.request_body(requests[ids[cid][0]])}) for cid in new}
        recs = [_submit(judge, client, state, chunk, lines) for chunk in _chunks(new, lines, judge.batch_max_requests)]
        for rec in recs:
            _finish(judge, client, state, rec, kinds, emit, progress)
    finally:
        client.close()


def _chunks(new: list[str], lines: dict[str, str], max_lines: int) -> list[list[str]]:
    out: list[list[str]] = []
    size = 0
    for cid in new:
        n = len(lines[cid].encode()) + 1
        if not out or len(out[-1]) >= max_lines or size + n > MAX_BYTES:
            out.append([])
            size = 0
        out[-1].append(cid)
        size += n
    return out


def _submit(judge, client, state: BatchState, new: list[str], lines: dict[str, str]) -> dict[str, Any]:
    import openai

    stamp = time.strftime("%Y%m%d-%H%M%S")
    input_path = state.dir / f"input-{stamp}-{len(state.batches)}.jsonl"
    input_path.write_text("".join(lines[cid] + "\n" for cid in new))
    try:
        f = client.files.create(file=(input_path.name, input_path.read_bytes()), purpose="batch")
        b = client.batches.create(input_file_id=f.id, endpoint=ENDPOINT, completion_window="24h",
                                  metadata={"judge": judge.name, "model": judge.model})
    except openai.OpenAIError as e:
        from em.judge.openai_judge import _describe

        raise JudgeError(f"judge {judge.name}: submitting a batch of {len(new)} requests to {judge.base_url} "
                         f"failed: {_describe(e)}") from None
    rec = {"id": b.id, "input_file_id": f.id, "input": input_path.name, "created": stamp, "custom_ids": new,
           "done": False}
    state.batches.append(rec)
    state.save()  # before any waiting: a killed run re-attaches to this batch instead of paying twice
    log.info("judge %s: submitted batch %s (%d requests, input file %s)", judge.name, b.id, len(new), f.id)
    return rec


def _finish(judge, client, state: BatchState, rec: dict[str, Any], kinds: dict[str, str], emit, progress: bool) -> None:
    """Wait for the batch, download its files, score every line, emit a judgment for each of its requests."""
    batch = _poll(judge, client, rec, progress)
    status = batch.status
    rec["status"] = status
    got: dict[str, Judgment] = {}
    for field, kind in (("output_file_id", "output"), ("error_file_id", "errors")):
        file_id = getattr(batch, field, None)
        if not file_id:
            continue
        text = _download(judge, client, file_id, rec["id"])
        name = f"{rec['id']}-{kind}.jsonl"
        (state.dir / name).write_text(text)
        rec[kind] = name
        got.update(parse_lines(text, kinds))
    # Saved and marked before any emit: a kill from here on re-reads the files, never asks the API again.
    rec["done"] = True
    state.save()
    if status == "completed":
        missing = f"batch {rec['id']} completed without a result line for this request"
    else:
        missing = f"batch {rec['id']} {status}: {_batch_reason(batch)}"
    n_ok = 0
    for cid in rec["custom_ids"]:
        j = got.get(cid) or Judgment.failed(missing)
        n_ok += j.final
        emit(cid, j)
    log.info("judge %s: batch %s %s: %d of %d requests answered", judge.name, rec["id"], status, n_ok,
             len(rec["custom_ids"]))


def _poll(judge, client, rec: dict[str, Any], progress: bool):
    import openai
    from tqdm.auto import tqdm

    from em.judge.openai_judge import _describe

    bar = tqdm(total=len(rec["custom_ids"]), desc=f"judge {judge.name} batch", unit="req", disable=not progress,
               leave=False)
    last = None
    errors = 0
    try:
        while True:
            try:
                batch = client.batches.retrieve(rec["id"])
                errors = 0
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
                raise JudgeError(f"judge {judge.name}: batch {rec['id']} at {judge.base_url}: {_describe(e)}") from None
            except openai.OpenAIError as e:  # the client already retried; keep waiting, the batch runs on
                errors += 1
                if errors > 10:
                    raise JudgeError(f"judge {judge.name}: polling batch {rec['id']} keeps failing: {_describe(e)} "
                                     f"(a rerun re-attaches to it)") from None
                log.warning("judge %s: polling batch %s: %s", judge.name, rec["id"], _describe(e))
                time.sleep(judge.batch_poll_s)
                continue
            counts = batch.request_counts
            if counts is not None:
                bar.n = min(bar.total, (counts.completed or 0) + (counts.failed or 0))
            if batch.status != last:
                log.info("judge %s: batch %s is %s", judge.name, rec["id"], batch.status)
                last = batch.status
            bar.set_postfix_str(batch.status, refresh=False)
            bar.refresh()
            if batch.status in TERMINAL:
                return batch
            time.sleep(judge.batch_poll_s)
    finally:
        bar.close()


def _download(judge, client, file_id: str, batch_id: str) -> str:
    import openai

    from em.judge.openai_judge import _describe

    try:
        return client.files.content(file_id).text
    except openai.OpenAIError as e:
        raise JudgeError(f"judge {judge.name}: downloading file {file_id} of batch {batch_id} failed: "
                         f"{_describe(e)} (a rerun re-attaches to the batch)") from None


def parse_lines(text: str, kinds: dict[str, str]) -> dict[str, Judgment]:
    """custom_id -> judgment for every line of a batch output / error file (only the ids in ``kinds``)."""
    from em.judge.openai_judge import judgment_from_reply

    out: dict[str, Judgment] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            cid = rec["custom_id"]
        except (ValueError, KeyError, TypeError):
            log.warning("batch file line %d is unreadable; skipped", n)
            continue
        if cid not in kinds:
            continue
        resp = rec.get("response") or {}
        err = rec.get("error")
        status = resp.get("status_code") if isinstance(resp, dict) else None
        body = resp.get("body") if isinstance(resp, dict) else None
        if err or status != 200:
            out[cid] = Judgment.failed(f"batch request failed: {_line_error(err, status, body)}")
            continue
        judgment, problem = judgment_from_reply(body, kinds[cid])
        out[cid] = judgment if judgment is not None else Judgment.failed(f"batch reply: {problem}")
    return out


def _line_error(err: Any, status: Any, body: Any) -> str:
    parts = []
    if status is not None:
        parts.append(f"HTTP {status}")
    for e in (err, (body or {}).get("error") if isinstance(body, dict) else None):
        if isinstance(e, dict):
            msg = " ".join(str(e.get("message") or "").split())[:200]
            code = e.get("code") or e.get("type")
            parts.append(f"{code}: {msg}" if code else msg)
    return " ".join(p for p in parts if p) or "no response"


def _batch_reason(batch) -> str:
    errs = getattr(batch, "errors", None)
    data = getattr(errs, "data", None) or []
    msgs = [f"{e.code}: {e.message}" if getattr(e, "code", None) else str(e.message) for e in data]
    if msgs:
        return "; ".join(msgs)[:500]
    return {"expired": "not finished within the 24 h completion window",
            "cancelled": "the batch was cancelled"}.get(batch.status, "no reason given")


def _read_saved(directory: Path, rec: dict[str, Any], kinds: dict[str, str]) -> dict[str, Judgment]:
    out: dict[str, Judgment] = {}
    for kind in ("errors", "output"):  # output last: a good line wins
        name = rec.get(kind)
        if name and (directory / name).is_file():
            out.update(parse_lines((directory / name).read_text(), kinds))
    return out


__all__ = ["custom_id", "parse_lines", "run_batch"]
