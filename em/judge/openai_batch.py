"""The OpenAI Batch API judge (``judge=openai_batch``): the synchronous judge's requests at half the price.

Source followed: the OpenAI Batch API guide (platform.openai.com/docs/guides/batch) and API reference (Files,
Batches). Every request the cache does not hold becomes one line of a JSONL file (``custom_id`` = the
request's cache key, ``POST /v1/chat/completions``, the same body as the synchronous path:
:func:`em.judge.openai_wire.request_body`), uploaded with ``files.create(purpose="batch")`` and submitted with
``batches.create(completion_window="24h")``; more than ``batch_max_requests`` lines (the API's limit: 50,000)
or ~190 MB (its limit: 200 MB) are split into several batches. The batch id is recorded in
``<batch dir>/batches.json`` *before* polling starts, so a killed or restarted run re-attaches to the batch it
already paid for instead of submitting a second one. ``batches.retrieve`` is polled every ``batch_poll_s``
seconds (a progress bar shows the batch's request counts); then the output file and the error file are
downloaded (kept next to the state file) and each line is scored by exactly the code the synchronous path
uses (:func:`em.judge.openai_wire.judgment_from_reply`). Error lines, a failed / expired / cancelled batch and
requests missing from the output become unscored judgments with the reason (not cached, so the next run asks
again), never a made-up score.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

from em.errors import JudgeError
from em.judge.base import OnResult
from em.judge.cache import request_key
from em.judge.openai_wire import ENDPOINT, OpenAIEndpointJudge, batch_line, describe, parse_lines
from em.judge.scoring import Judgment, JudgeRequest
from em.runtime import atomic_write_json, atomic_write_text

log = logging.getLogger("em.judge")

TERMINAL = ("completed", "failed", "expired", "cancelled")
STATE_FILE = "batches.json"
MAX_BYTES = 190_000_000  # per input file, under the Batch API's 200 MB limit
BATCH_PRICE_FACTOR = 0.5  # the Batch API costs half the synchronous price

Emit = Callable[[str, Judgment], None]


class OpenAIBatchJudge(OpenAIEndpointJudge):
    """``judge=openai_batch``: the OpenAI judge's requests through the Batch API (half price, within 24 h).

    Same request, scoring and cache identity as :class:`~em.judge.openai_judge.OpenAIJudge`, so the two share
    cached judgments and give identical judgments for identical replies.

    Args: the endpoint settings of :class:`~em.judge.openai_wire.OpenAIEndpointJudge`, and
        batch_poll_s: seconds between status polls.
        batch_max_requests: requests per batch (1..50,000); more are split into several batches.
        batch_dir: where the batch state and files live; None: ``<state_dir>/judge_batch/<name>``, with the
            ``state_dir`` that :meth:`run` is given (the evaluation's run directory).

    Ranges are checked by :class:`em.config.judge.OpenAIBatchJudgeSchema`, not here.
    """

    def __init__(self, *, name: str, model: str, base_url: Optional[str], api_key_env: str, max_retries: int,
                 timeout: float, top_logprobs: int, price_input_per_mtok: Optional[float],
                 price_output_per_mtok: Optional[float], batch_poll_s: float, batch_max_requests: int,
                 batch_dir: Optional[str]):
        super().__init__(name=name, model=model, base_url=base_url, api_key_env=api_key_env,
                         max_retries=max_retries, timeout=timeout, top_logprobs=top_logprobs,
                         price_input_per_mtok=price_input_per_mtok, price_output_per_mtok=price_output_per_mtok)
        self.batch_poll_s = float(batch_poll_s)
        self.batch_max_requests = int(batch_max_requests)
        self.batch_dir = batch_dir

    def estimate(self, requests: list[JudgeRequest]) -> dict[str, Any]:
        """The synchronous estimate at half the price (``cost_usd_synchronous`` keeps the full one)."""
        out = super().estimate(requests)
        out["batch_api"] = True
        if out["cost_usd"] is not None:
            out["cost_usd_synchronous"] = out["cost_usd"]
            out["cost_usd"] = out["cost_usd"] * BATCH_PRICE_FACTOR
            out["note"] = "batch API: half the synchronous price (results within 24 h)"
        else:
            out["note"] += "; batch API: half the synchronous price"
        return out

    def directory(self, state_dir: Optional[Path]) -> Path:
        """Where this judge keeps its batches: ``batch_dir``, else ``<state_dir>/judge_batch/<name>``.

        Raises:
            JudgeError: neither is given.
        """
        if self.batch_dir:
            return Path(self.batch_dir).expanduser()
        if state_dir is None:
            raise JudgeError(f"judge {self.name}: judge=openai_batch needs a directory for its batch state "
                             f"(set judge.batch_dir, or run it from an evaluation, which uses <run_dir>/judge_batch)")
        return Path(state_dir) / "judge_batch" / self.name

    def run(self, requests: list[JudgeRequest], on_result: OnResult, progress: bool = True,
            state_dir: Optional[Path] = None) -> None:
        """Judge every request through the Batch API, re-attaching to batches recorded in the batch directory
        (see :meth:`em.judge.base.Judge.run`). Blocks until every batch ends (up to the 24 h window).

        Raises:
            JudgeError: no key or no batch directory; a submission, a download or polling fails for good
                (a rerun re-attaches to the recorded batches).
        """
        directory = self.directory(state_dir)
        self.check()
        if requests:
            self.check_reachable()
        run_batch(self, requests, on_result, progress, directory)


def custom_id(judge: OpenAIEndpointJudge, req: JudgeRequest) -> str:
    """The request's ``custom_id``: its cache key (judge identity + prompt + kind), as the runner computes it."""
    return request_key(judge.identity, req)


class BatchState:
    """``batches.json``: every batch this judge submitted from this directory, with its custom_ids.

    Raises (on load):
        JudgeError: the file exists but cannot be read (a batch it names may still be running and billed).
    """

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
        """Write the state atomically: a kill never leaves half a state file."""
        atomic_write_json(self.path, {"batches": self.batches}, indent=1)


def run_batch(judge: OpenAIBatchJudge, requests: list[JudgeRequest], on_result: OnResult, progress: bool,
              directory: Path) -> None:
    """Judge ``requests`` through the Batch API, keeping the batches' state and files in ``directory``.

    Finished batches recorded there give their saved answers back (a request that failed there goes into a new
    batch), running ones are re-attached to, the rest is submitted as new batches (all recorded before any
    waiting); ``on_result(i, judgment)`` is called once per request.
    """
    from openai import OpenAI

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

    client = OpenAI(api_key=os.environ[judge.api_key_env], base_url=judge.endpoint,
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
        lines = {cid: batch_line(cid, judge.request_body(requests[ids[cid][0]])) for cid in new}
        recs = [_submit(judge, client, state, chunk, lines) for chunk in _chunks(new, lines, judge.batch_max_requests)]
        for rec in recs:
            _finish(judge, client, state, rec, kinds, emit, progress)
    finally:
        client.close()


def _chunks(new: list[str], lines: dict[str, str], max_lines: int) -> list[list[str]]:
    """Split the custom_ids into batches of at most ``max_lines`` lines and MAX_BYTES bytes, in order."""
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


def _submit(judge: OpenAIBatchJudge, client, state: BatchState, new: list[str], lines: dict[str, str]
            ) -> dict[str, Any]:
    """Upload one input file, create its batch and record it (saved before any waiting); its state record."""
    import openai

    stamp = time.strftime("%Y%m%d-%H%M%S")
    input_path = state.dir / f"input-{stamp}-{len(state.batches)}.jsonl"
    atomic_write_text(input_path, "".join(lines[cid] + "\n" for cid in new))
    try:
        f = client.files.create(file=(input_path.name, input_path.read_bytes()), purpose="batch")
        b = client.batches.create(input_file_id=f.id, endpoint=ENDPOINT, completion_window="24h",
                                  metadata={"judge": judge.name, "model": judge.model})
    except openai.OpenAIError as e:
        raise JudgeError(f"judge {judge.name}: submitting a batch of {len(new)} requests to {judge.base_url} "
                         f"failed: {describe(e)}") from None
    rec = {"id": b.id, "input_file_id": f.id, "input": input_path.name, "created": stamp, "custom_ids": new,
           "done": False}
    state.batches.append(rec)
    state.save()  # before any waiting: a killed run re-attaches to this batch instead of paying twice
    log.info("judge %s: submitted batch %s (%d requests, input file %s)", judge.name, b.id, len(new), f.id)
    return rec


def _finish(judge: OpenAIBatchJudge, client, state: BatchState, rec: dict[str, Any], kinds: dict[str, str],
            emit: Emit, progress: bool) -> None:
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
        atomic_write_text(state.dir / name, text)
        rec[kind] = name
        got.update(parse_lines(text, kinds, judge.model))
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


def _poll(judge: OpenAIBatchJudge, client, rec: dict[str, Any], progress: bool):
    """Poll ``batches.retrieve`` every ``batch_poll_s`` seconds until the batch ends; the final batch object.

    Raises:
        JudgeError: the endpoint refuses the key or does not know the batch; polling fails 11 times in a row.
    """
    import openai
    from tqdm.auto import tqdm

    bar = tqdm(total=len(rec["custom_ids"]), desc=f"judge {judge.name} batch", unit="req", disable=None if progress else True,
               leave=False)
    last = None
    errors = 0
    try:
        while True:
            try:
                batch = client.batches.retrieve(rec["id"])
                errors = 0
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
                raise JudgeError(f"judge {judge.name}: batch {rec['id']} at {judge.base_url}: {describe(e)}") from None
            except openai.OpenAIError as e:  # the client already retried; keep waiting, the batch runs on
                errors += 1
                if errors > 10:
                    raise JudgeError(f"judge {judge.name}: polling batch {rec['id']} keeps failing: {describe(e)} "
                                     f"(a rerun re-attaches to it)") from None
                log.warning("judge %s: polling batch %s: %s", judge.name, rec["id"], describe(e))
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


def _download(judge: OpenAIBatchJudge, client, file_id: str, batch_id: str) -> str:
    """A batch output / error file's text.

    Raises:
        JudgeError: the download fails after the client's retries (a rerun re-attaches to the batch).
    """
    import openai

    try:
        return client.files.content(file_id).text
    except openai.OpenAIError as e:
        raise JudgeError(f"judge {judge.name}: downloading file {file_id} of batch {batch_id} failed: "
                         f"{describe(e)} (a rerun re-attaches to the batch)") from None


def _batch_reason(batch) -> str:
    """Why a batch did not complete: its errors, else what its status means."""
    errs = getattr(batch, "errors", None)
    data = getattr(errs, "data", None) or []
    msgs = [f"{e.code}: {e.message}" if getattr(e, "code", None) else str(e.message) for e in data]
    if msgs:
        return "; ".join(msgs)[:500]
    return {"expired": "not finished within the 24 h completion window",
            "cancelled": "the batch was cancelled"}.get(batch.status, "no reason given")


def _read_saved(directory: Path, rec: dict[str, Any], kinds: dict[str, str]) -> dict[str, Judgment]:
    """The judgments of a finished batch, from its output / error files saved in ``directory``."""
    out: dict[str, Judgment] = {}
    for kind in ("errors", "output"):  # output last: a good line wins
        name = rec.get(kind)
        if name and (directory / name).is_file():
            out.update(parse_lines((directory / name).read_text(), kinds))
    return out


__all__ = ["OpenAIBatchJudge", "custom_id", "run_batch"]
