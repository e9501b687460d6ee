"""A judge behind any OpenAI-compatible chat-completions endpoint (OpenAI, Azure-style proxies, vLLM...).

Reference request, exactly: the rendered prompt as one user message, ``max_tokens=1``, ``temperature=0``,
``logprobs=True``, ``top_logprobs=20``, ``seed=0``; scoring in :mod:`em.judge.scoring`.

Faults: HTTP 429 / 5xx / timeouts / dropped connections are retried by the openai client itself
(``max_retries`` with its exponential backoff, honouring Retry-After); a reply that arrives but is malformed
(invalid JSON, no choices, no logprobs) is re-asked up to ``reply_retries`` times with backoff. What still
fails becomes an unscored judgment with the reason, never a made-up score. Concurrency is bounded by an
asyncio semaphore around one AsyncOpenAI client. The API key is read from the environment variable the
config names (``api_key_env``), so it never appears in a config dump, a log or W&B.

``batch_api=True`` sends the same requests through the OpenAI Batch API instead (half price; see
:mod:`em.judge.openai_batch`), scored by the same :func:`judgment_from_reply`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
from typing import Any, Optional

from em.errors import ConfigError, JudgeError
from em.judge.base import Judge, OnResult
from em.judge.scoring import Judgment, JudgeRequest, judge_0_100, judge_label

log = logging.getLogger("em.judge")

DEFAULT_BASE_URL = "https://api.openai.com/v1"
BATCH_PRICE_FACTOR = 0.5  # the Batch API costs half the synchronous price
CHARS_PER_TOKEN = 4.0  # rough English average for the dry-run estimate (no tokenizer dependency)


class OpenAIJudge(Judge):
    def __init__(
        self,
        name: str = "gpt-4o",
        model: str = "gpt-4o-2024-08-06",
        base_url: Optional[str] = None,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 64,
        max_retries: int = 6,
        timeout: float = 60.0,
        reply_retries: int = 3,
        retry_backoff: float = 0.5,
        top_logprobs: int = 20,
        price_input_per_mtok: Optional[float] = None,
        price_output_per_mtok: Optional[float] = None,
        batch_api: bool = False,
        batch_poll_s: float = 30.0,
        batch_dir: Optional[str] = None,
        batch_max_requests: int = 50_000,
    ):
        _check(concurrency > 0, "judge.concurrency", f"must be > 0, got {concurrency}")
        _check(max_retries >= 0, "judge.max_retries", f"must be >= 0, got {max_retries}")
        _check(reply_retries >= 0, "judge.reply_retries", f"must be >= 0, got {reply_retries}")
        _check(timeout > 0, "judge.timeout", f"must be > 0, got {timeout}")
        _check(1 <= top_logprobs <= 20, "judge.top_logprobs", f"must be in 1..20, got {top_logprobs}")
        _check(bool(api_key_env), "judge.api_key_env", "must name the environment variable that holds the key")
        _check(1 <= batch_max_requests <= 50_000, "judge.batch_max_requests",
               f"must be in 1..50000 (the Batch API's limit), got {batch_max_requests}")
        _check(batch_poll_s > 0, "judge.batch_poll_s", f"must be > 0, got {batch_poll_s}")
        self.name = name
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout = timeout
        self.reply_retries = reply_retries
        self.retry_backoff = retry_backoff
        self.top_logprobs = top_logprobs
        self.price_in = price_input_per_mtok
        self.price_out = price_output_per_mtok
        self.batch_api = bool(batch_api)
        self.batch_poll_s = float(batch_poll_s)
        self.batch_max_requests = int(batch_max_requests)
        self.batch_dir = batch_dir  # null: <run_dir>/judge_batch/<name> (the evaluation sets run_dir)
        # The cache key: the same prompt to the same model at the same endpoint gets the same answer.
        self.identity = f"openai|{self.base_url}|{model}|top{top_logprobs}"

    # ------------------------------------------------------------------ checks & estimates
    def check(self) -> None:
        if not os.environ.get(self.api_key_env):
            raise JudgeError(
                f"judge.api_key_env: environment variable {self.api_key_env} is not set; the {self.name} judge "
                f"({self.model} at {self.base_url}) reads its API key from it"
            )
        try:
            import openai  # noqa: F401
        except ImportError as e:
            raise JudgeError(f"judge={self.name} needs the openai package (pip install openai): {e}") from None

    def estimate(self, requests: list[JudgeRequest]) -> dict[str, Any]:
        tokens_in = int(sum(len(r.prompt) for r in requests) / CHARS_PER_TOKEN) + 8 * len(requests)
        out: dict[str, Any] = {"requests": len(requests), "tokens_in_estimate": tokens_in,
                               "tokens_out": len(requests), "cost_usd": None}
        if self.price_in is not None and self.price_out is not None:
            out["cost_usd"] = tokens_in / 1e6 * self.price_in + len(requests) / 1e6 * self.price_out
        else:
            out["note"] = "no price configured (judge.price_input_per_mtok / price_output_per_mtok)"
        if self.batch_api:
            out["batch_api"] = True
            if out["cost_usd"] is not None:
                out["cost_usd_synchronous"] = out["cost_usd"]
                out["cost_usd"] = out["cost_usd"] * BATCH_PRICE_FACTOR
                out["note"] = "batch API: half the synchronous price (results within 24 h)"
            else:
                out["note"] += "; batch API: half the synchronous price"
        return out

    def request_body(self, req: JudgeRequest) -> dict[str, Any]:
        """The reference request, exactly (the synchronous path and every Batch API line send this)."""
        return {"model": self.model, "messages": [{"role": "user", "content": req.prompt}], "max_tokens": 1,
                "temperature": 0, "logprobs": True, "top_logprobs": self.top_logprobs, "seed": 0}

    # ------------------------------------------------------------------ running
    def run(self, requests: list[JudgeRequest], on_result: OnResult, progress: bool = True) -> None:
        self.check()
        if self.batch_api:
            from em.judge.openai_batch import run_batch

            run_batch(self, requests, on_result, progress)
            return
        asyncio.run(self._run(requests, on_result, progress))

    async def _run(self, requests: list[JudgeRequest], on_result: OnResult, progress: bool) -> None:
        from openai import AsyncOpenAI
        from tqdm.auto import tqdm

        client = AsyncOpenAI(api_key=os.environ[self.api_key_env], base_url=self.base_url,
                             max_retries=self.max_retries, timeout=self.timeout)
        sem = asyncio.Semaphore(self.concurrency)
        bar = tqdm(total=len(requests), desc=f"judge {self.name}", unit="req", disable=not progress,
                   leave=False)

        async def one(i: int, req: JudgeRequest) -> None:
            async with sem:
                judgment = await self._judge_one(client, req)
            on_result(i, judgment)
            bar.update(1)

        tasks = [asyncio.ensure_future(one(i, r)) for i, r in enumerate(requests)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:  # a fatal error in one task stops the others; finished ones are already stored
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            bar.close()
            await client.close()

    async def _judge_one(self, client, req: JudgeRequest) -> Judgment:
        import openai

        problem = "no reply"
        for attempt in range(self.reply_retries + 1):
            if attempt:
                await asyncio.sleep(self.retry_backoff * 2 ** (attempt - 1) * (0.5 + random.random()))
            try:
                # The raw reply, parsed here: building the client's pydantic objects costs more CPU than
                # the request itself at thousands of requests per second, and we read one field anyway.
                raw = await client.chat.completions.with_raw_response.create(**self.request_body(req))
                resp = json.loads(raw.http_response.content)
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
                # Every other request would fail the same way: stop the run (answers are on disk).
                raise JudgeError(f"judge {self.name}: {self.model} at {self.base_url}: {_describe(e)}") from None
            except openai.APIResponseValidationError as e:
                problem = f"malformed reply ({_describe(e)})"
                continue
            except (openai.APIStatusError, openai.APITimeoutError, openai.APIConnectionError) as e:
                # The client already retried these max_retries times with backoff.
                return Judgment.failed(f"{_describe(e)} (after {self.max_retries} retries)")
            except (ValueError, TypeError, KeyError) as e:  # a body that is not the JSON it claims to be
                problem = f"malformed reply ({type(e).__name__}: {_one_line(e)})"
                continue
            judgment, problem = judgment_from_reply(resp, req.kind)
            if judgment is None:
                continue
            return judgment
        return Judgment.failed(f"{problem} (after {self.reply_retries + 1} attempts)")


def judgment_from_reply(resp: Any, kind: str) -> tuple[Optional[Judgment], str]:
    """A chat-completion reply body -> (judgment, "") or (None, what is wrong with the reply).

    Shared by the synchronous path and the Batch API path, so both score a reply the same way."""
    top, problem = _top_logprobs(resp)
    if top is None:
        return None, problem
    return (judge_0_100(top) if kind == "0_100" else judge_label(top)), ""


def _top_logprobs(resp: Any) -> tuple[Optional[list[tuple[str, float]]], str]:
    """The first position's top logprobs from the reply body, or (None, what is wrong with the reply)."""
    try:
        choice = resp["choices"][0]
    except (KeyError, IndexError, TypeError):
        return None, "malformed reply (no choices)"
    content = (choice.get("logprobs") or {}).get("content") if isinstance(choice, dict) else None
    if not content:
        return None, "reply carries no logprobs"
    try:
        top = [(str(t["token"]), float(t["logprob"])) for t in content[0]["top_logprobs"]]
    except (KeyError, IndexError, TypeError, ValueError):
        return None, "malformed reply (unreadable top_logprobs)"
    if not top:
        return None, "reply carries no top_logprobs"
    return top, ""


def _describe(e: Exception) -> str:
    status = getattr(e, "status_code", None)
    kind = type(e).__name__
    return f"HTTP {status} {kind}" if status else f"{kind}: {_one_line(e)}"


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())[:200]


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {msg}")


__all__ = ["OpenAIJudge"]
