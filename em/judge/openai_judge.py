"""A judge behind any OpenAI-compatible chat-completions endpoint (OpenAI, Azure-style proxies, vLLM...),
one synchronous request per prompt.

The request, the reply -> judgment step and the cache identity are :mod:`em.judge.openai_wire`'s (shared with
the Batch API judge, :mod:`em.judge.openai_batch`); the scoring math is :mod:`em.judge.scoring`'s.

Faults: HTTP 429 / 5xx / timeouts / dropped connections are retried by the openai client itself
(``max_retries`` with its exponential backoff, honouring Retry-After); a reply that arrives but is malformed
(invalid JSON, no choices, no logprobs) is re-asked up to ``reply_retries`` times with backoff. What still
fails becomes an unscored judgment with the reason, never a made-up score. Concurrency is bounded by an
asyncio semaphore around one AsyncOpenAI client. A judge that stops answering (``max_consecutive_failures``
requests in a row time out, cannot connect or get a gateway error 502 / 503 / 504, after the client's retries)
stops the run with one line instead of spending every remaining request's timeouts; what was judged is kept.
Several processes sharing one cache claim each key just before they ask it (:class:`em.judge.base.Claims`),
so none pays for a prompt another is asking or has answered. The API key is read from the environment variable the
config names (``api_key_env``), so it never appears in a config dump, a log or W&B.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from pathlib import Path
from typing import Any, Optional

from em.errors import JudgeError
from em.judge import sampled
from em.judge.base import Claims, OnResult
from em.judge.openai_wire import (OpenAIEndpointJudge, describe, identity, judgment_from_reply, one_line,
                                  reply_model_problem)
from em.judge.scoring import Judgment, JudgeRequest


class OpenAIJudge(OpenAIEndpointJudge):
    """``judge=openai``: concurrent synchronous chat-completions requests, scored from their top logprobs.

    Args: the endpoint settings of :class:`~em.judge.openai_wire.OpenAIEndpointJudge`, and
        concurrency: requests in flight (> 0).
        reply_retries: how often a malformed reply is asked again.
        retry_backoff: seconds before the first re-ask, doubled each time (times a 0.5..1.5 jitter).
        max_consecutive_failures: requests in a row that got no answer (timeout, no connection, HTTP 502 / 503 /
            504, each after the client's retries) before the run stops with a JudgeError; 0: never stop.

    Ranges are checked by :class:`em.config.judge.OpenAIJudgeSchema` when the config is composed and
    validated, not here. Source followed: Betley et al., ``open_models/judge.py`` (``OpenAiJudge``).
    """

    claims_each_request = True  # run() takes claims= and claims each key just before it sends it

    def __init__(self, *, name: str, model: str, base_url: Optional[str], api_key_env: str, concurrency: int,
                 max_retries: int, timeout: float, reply_retries: int, retry_backoff: float, top_logprobs: int,
                 price_input_per_mtok: Optional[float], price_output_per_mtok: Optional[float],
                 max_consecutive_failures: int, score_mode: str, n_samples: int, min_parsed: Optional[int],
                 sample_max_tokens: Optional[int], sample_n_per_request: bool):
        super().__init__(name=name, model=model, base_url=base_url, api_key_env=api_key_env,
                         max_retries=max_retries, timeout=timeout, top_logprobs=top_logprobs,
                         price_input_per_mtok=price_input_per_mtok, price_output_per_mtok=price_output_per_mtok)
        self.concurrency = concurrency
        self.reply_retries = reply_retries
        self.retry_backoff = retry_backoff
        self.max_consecutive_failures = max_consecutive_failures
        self.score_mode = score_mode
        if score_mode == sampled.SAMPLED:  # another judge: its own name, cache identity and columns
            self.n_samples = n_samples
            self.min_parsed = min_parsed if min_parsed is not None else sampled.default_min_parsed(n_samples)
            self.sample_max_tokens = sample_max_tokens
            self.sample_n_per_request = sample_n_per_request
            self.name = sampled.sampled_name(name, n_samples)
            self.identity = sampled.sampled_identity(
                identity(self.base_url, model, 0).rsplit("|", 1)[0], n_samples, self.min_parsed, sample_max_tokens)

    def run(self, requests: list[JudgeRequest], on_result: OnResult, progress: bool = True,
            state_dir: Optional[Path] = None, claims: Optional[Claims] = None) -> None:
        """Judge every request concurrently (see :meth:`em.judge.base.Judge.run`; ``state_dir`` is unused).

        Args (besides the base class's):
            claims: claim each request's key just before sending it (several processes on one cache); a key
                another process holds is waited for, one it answered meanwhile is not sent. None: send all.

        Raises:
            JudgeError: no key; the endpoint does not answer at all (start-up check); it refuses the key / model
                (HTTP 401 / 403 / 404); or ``max_consecutive_failures`` requests in a row got no answer. Every
                other request would fail the same way, so the run stops (finished judgments are already reported).
        """
        self.check()
        if requests:
            self.check_reachable()
        asyncio.run(self._run(requests, on_result, progress, claims))

    async def _run(self, requests: list[JudgeRequest], on_result: OnResult, progress: bool,
                   claims: Optional[Claims] = None) -> None:
        from openai import AsyncOpenAI
        from tqdm.auto import tqdm

        client = AsyncOpenAI(api_key=os.environ[self.api_key_env], base_url=self.endpoint,
                             max_retries=self.max_retries, timeout=self.timeout)
        sem = asyncio.Semaphore(self.concurrency)
        bar = tqdm(total=len(requests), desc=f"judge {self.name}", unit="req", disable=None if progress else True,
                   leave=False)

        streak = {"silent": 0, "judged": 0}  # requests in a row without an answer; final judgments so far

        async def one(i: int, req: JudgeRequest) -> None:
            waits = 0
            while True:
                async with sem:
                    status = claims.claim(i) if claims is not None else "ask"
                    if status == "ask":
                        try:
                            judgment, silent = await self._judge_one(client, req)
                        except BaseException:  # cancelled or stopped: not answered, another process may ask
                            if claims is not None:
                                claims.release(i)
                            raise
                        break
                if status == "done":  # another process sharing the cache judged it meanwhile
                    bar.update(1)
                    return
                waits += 1  # "wait": another process is asking it; look again later
                await asyncio.sleep(claims.wait_s(waits))
            on_result(i, judgment)
            bar.update(1)
            streak["silent"] = streak["silent"] + 1 if silent else 0
            streak["judged"] += judgment.final
            if self.max_consecutive_failures and streak["silent"] >= self.max_consecutive_failures:
                raise JudgeError(
                    f"judge {self.name}: {streak['silent']} requests in a row got no answer from {self.base_url} "
                    f"(last: {judgment.reason}); stopped asking (judge.max_consecutive_failures="
                    f"{self.max_consecutive_failures}); the answers and the {streak['judged']} judgments of this "
                    f"run are kept, a rerun asks the rest")

        tasks = [asyncio.ensure_future(one(i, r)) for i, r in enumerate(requests)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:  # a fatal error in one task stops the others; finished ones are already stored
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            bar.close()
            await client.close()

    async def _judge_one(self, client, req: JudgeRequest) -> tuple[Judgment, bool]:
        """(the judgment of one request, whether the endpoint gave no answer at all: timeout, no connection,
        a gateway error 502 / 503 / 504 -- what counts towards ``max_consecutive_failures``)."""
        if self.score_mode == sampled.SAMPLED:
            return await self._sample_one(client, req), False
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
                raise JudgeError(f"judge {self.name}: {self.model} at {self.base_url}: {describe(e)}") from None
            except openai.APIResponseValidationError as e:
                problem = f"malformed reply ({describe(e)})"
                continue
            except (openai.APIStatusError, openai.APITimeoutError, openai.APIConnectionError) as e:
                # The client already retried these max_retries times with backoff.
                silent = isinstance(e, openai.APIConnectionError) or getattr(e, "status_code", None) in (502, 503, 504)
                return Judgment.failed(f"{describe(e)} (after {self.max_retries} retries)"), silent
            except (ValueError, TypeError, KeyError) as e:  # a body that is not the JSON it claims to be
                problem = f"malformed reply ({type(e).__name__}: {one_line(e)})"
                continue
            judgment, problem = judgment_from_reply(resp, req.kind, self.model)
            if judgment is None:
                continue
            return judgment, False
        return Judgment.failed(f"{problem} (after {self.reply_retries + 1} attempts)"), False

    async def _ask(self, client, body: dict) -> tuple[Optional[list[str]], str]:
        """One sampled request -> (its replies' texts, "") or (None, the problem); raises JudgeError on 401/403/404
        and openai.BadRequestError (the caller's: an endpoint that refuses ``n``)."""
        import openai

        problem = "no reply"
        for attempt in range(self.reply_retries + 1):
            if attempt:
                await asyncio.sleep(self.retry_backoff * 2 ** (attempt - 1) * (0.5 + random.random()))
            try:
                raw = await client.chat.completions.with_raw_response.create(**body)
                resp = json.loads(raw.http_response.content)
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
                raise JudgeError(f"judge {self.name}: {self.model} at {self.base_url}: {describe(e)}") from None
            except openai.BadRequestError:
                raise
            except openai.APIResponseValidationError as e:
                problem = f"malformed reply ({describe(e)})"
                continue
            except (openai.APIStatusError, openai.APITimeoutError, openai.APIConnectionError) as e:
                return None, f"{describe(e)} (after {self.max_retries} retries)"
            except (ValueError, TypeError, KeyError) as e:
                problem = f"malformed reply ({type(e).__name__}: {one_line(e)})"
                continue

            texts, problem = sampled.replies_of(resp)
            problem = problem or reply_model_problem(self.model, resp.get("model")) or ""
            if texts is not None and not problem:
                return texts, ""
        return None, f"{problem} (after {self.reply_retries + 1} attempts)"

    async def _sample_one(self, client, req: JudgeRequest) -> Judgment:
        """``score_mode=sampled``: k replies at temperature 1 (one ``n=k`` request where the endpoint honours
        it; the rest, or all when it refuses ``n``, one request each, seeded by sample index) -> the mean."""
        import openai

        k = self.n_samples
        replies: list[str] = []
        if self.sample_n_per_request and k > 1 and getattr(self, "_n_refused", False) is False:
            try:
                texts, problem = await self._ask(client, sampled.request_body(
                    self.model, req.prompt, k, 0, self.sample_max_tokens))
            except openai.BadRequestError:  # the endpoint refuses n > 1: ask one sample per request from now on
                self._n_refused = True
                texts, problem = [], ""
            if texts is None:
                return Judgment.failed(problem)
            replies += texts[:k]  # an endpoint that ignores n answers one choice: the rest come one by one
        while len(replies) < k:
            try:
                texts, problem = await self._ask(client, sampled.request_body(
                    self.model, req.prompt, 1, len(replies), self.sample_max_tokens))
            except openai.BadRequestError as e:
                return Judgment.failed(f"{describe(e)}: {one_line(e)}")
            if texts is None:
                return Judgment.failed(problem)
            replies.append(texts[0])
        return sampled.judge_sampled(replies, req.kind, self.min_parsed)

    def estimate(self, requests: list[JudgeRequest]) -> dict[str, Any]:
        """Dry run: as the logprob judge's estimate, with k samples of up to ``sample_max_tokens`` output tokens
        each in sampled mode (input billed once per prompt with ``n=k``, k times without)."""
        out = super().estimate(requests)
        if self.score_mode != sampled.SAMPLED:
            return out
        k = self.n_samples
        per = self.sample_max_tokens if self.sample_max_tokens is not None else 16
        out["tokens_out"] = len(requests) * k * per
        if not self.sample_n_per_request:
            out["tokens_in_estimate"] *= k
        out["score_mode"] = f"sampled (k={k}, up to {per} output tokens per sample"
        out["score_mode"] += ")" if self.sample_max_tokens is not None else "; no limit set: 16 assumed)"
        if self.price_in is not None and self.price_out is not None:
            out["cost_usd"] = out["tokens_in_estimate"] / 1e6 * self.price_in + out["tokens_out"] / 1e6 * self.price_out
        return out


__all__ = ["OpenAIJudge"]
