"""The OpenAI chat-completions wire protocol of the judges, in one place: the request body, the reply -> judgment
step (a synchronous reply or a Batch API output line), the cache identity, and the endpoint settings both
OpenAI judges share.

The synchronous judge (:mod:`em.judge.openai_judge`) and the Batch API judge (:mod:`em.judge.openai_batch`)
both send :func:`request_body`, score every reply with :func:`judgment_from_reply` and key the cache by
:func:`identity`, so they ask the same question, score it the same way and share cached judgments.

Reference request (Betley et al., ``open_models/judge.py``, ``OpenAiJudge.logprob_probs``): the rendered prompt
as one user message, ``max_tokens=1``, ``temperature=0``, ``logprobs=True``, ``top_logprobs=20``, ``seed=0``;
the scoring math is in :mod:`em.judge.scoring`. Reply format: the OpenAI Chat Completions API reference,
``choices[0].logprobs.content[0].top_logprobs[*].{token, logprob}``.

Light on purpose: the openai package is imported only by the judges that send requests.
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any, Optional

from em.config.judge import KEY_ENV_MESSAGE, looks_like_secret
from em.errors import JudgeError
from em.judge.base import Judge
from em.judge.scoring import Judgment, JudgeRequest, judge_0_100, judge_label, logprob_problem
from em.tracking import redact_url, redact_urls

log = logging.getLogger("em.judge")

DEFAULT_BASE_URL = "https://api.openai.com/v1"
ENDPOINT = "/v1/chat/completions"  # the Batch API line's url
_SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})$")  # a dated snapshot: -2024-08-06, -0613
CHARS_PER_TOKEN = 4.0  # rough English average for the dry-run estimate (no tokenizer dependency)
PROMPT_OVERHEAD_TOKENS = 8  # chat-format tokens around one user message, per request (estimate)


def resolve_base_url(base_url: Optional[str]) -> str:
    """The endpoint: ``base_url``, else ``$OPENAI_BASE_URL``, else the OpenAI API; without a trailing slash."""
    return (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")


def identity(base_url: str, model: str, top_logprobs: int) -> str:
    """The cache identity of an OpenAI-compatible judge: the same prompt to the same model at the same endpoint
    (with the same number of top logprobs) gets the same answer, synchronously or through the Batch API.
    Credentials in ``base_url`` are never part of it (:func:`em.tracking.redact_url`)."""
    return f"openai|{redact_url(base_url)}|{model}|top{top_logprobs}"


def request_body(model: str, prompt: str, top_logprobs: int = 20) -> dict[str, Any]:
    """The chat-completions request body for one rendered judge prompt: the reference request, exactly.

    Sent as the synchronous request and as the ``body`` of every Batch API line."""
    return {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 1,
            "temperature": 0, "logprobs": True, "top_logprobs": top_logprobs, "seed": 0}


def model_family(model: str) -> str:
    """A model id without its snapshot suffix: ``gpt-4o-2024-11-20`` -> ``gpt-4o``, ``gpt-4-0613`` -> ``gpt-4``."""
    return _SNAPSHOT.sub("", str(model).strip().lower())


def reply_model_problem(requested: Optional[str], replied: Any) -> Optional[str]:
    """Why a reply naming model ``replied`` cannot stand for a request to ``requested``, or None.

    A snapshot of the requested family is fine (``gpt-4o`` answered by ``gpt-4o-2024-11-20`` and back);
    another family (``gpt-3.5-turbo-0125`` for ``gpt-4o-2024-11-20``) is not. No model in the reply (some
    OpenAI-compatible servers) or no requested model: nothing to check."""
    if not requested or not isinstance(replied, str) or not replied.strip():
        return None
    if model_family(replied) == model_family(requested):
        return None
    return f"reply is from model {replied!r}, not the requested {requested!r}"


def judgment_from_reply(resp: Any, kind: str, model: Optional[str] = None) -> tuple[Optional[Judgment], str]:
    """A chat-completion reply body (parsed JSON) -> ``(judgment, "")``, or ``(None, what is wrong with it)``.

    Args:
        resp: the reply body (a synchronous reply, or a Batch API output line's ``response.body``).
        kind: ``0_100`` (the probability-weighted score) or ``label`` (the top token).
        model: the requested model; a reply from another family (:func:`reply_model_problem`) is refused.

    A malformed reply (no choices, no logprobs, unsound logprobs -- NaN, infinite, above 0 --, another model)
    gives None and the problem, so the caller can ask again or record a failed judgment with that reason
    (never cached); it never raises."""
    top, problem = top_logprobs_of(resp)
    if top is None:
        return None, problem
    problem = reply_model_problem(model, resp.get("model") if isinstance(resp, dict) else None)
    if problem is None:
        problem = logprob_problem(top)
    if problem:
        return None, problem
    return (judge_0_100(top) if kind == "0_100" else judge_label(top)), ""


def top_logprobs_of(resp: Any) -> tuple[Optional[list[tuple[str, float]]], str]:
    """The first completion token's top logprobs ``[(token, logprob), ...]`` from a reply body, or
    ``(None, what is wrong with the reply)``."""
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


def batch_line(custom_id: str, body: dict[str, Any]) -> str:
    """One line of a Batch API input file (JSON, no newline): ``POST /v1/chat/completions`` with ``body``."""
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body})


def parse_lines(text: str, kinds: dict[str, str], model: Optional[str] = None) -> dict[str, Judgment]:
    """custom_id -> judgment for every line of a batch output / error file.

    Args:
        text: the JSONL file (one ``{"custom_id", "response": {"status_code", "body"}, "error"}`` per line).
        kinds: custom_id -> ``0_100`` / ``label`` for the ids to read (other lines are skipped).
        model: the requested model (a reply from another family is a failure, see :func:`judgment_from_reply`).

    An error line or a non-200 response gives an unscored, non-final judgment with the reason; an unreadable
    line is skipped with a warning (its request then counts as missing)."""
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
        judgment, problem = judgment_from_reply(body, kinds[cid], model)
        out[cid] = judgment if judgment is not None else Judgment.failed(f"batch reply: {problem}")
    return out


def _line_error(err: Any, status: Any, body: Any) -> str:
    """One line for a failed batch request: HTTP status, error code and message."""
    parts = []
    if status is not None:
        parts.append(f"HTTP {status}")
    for e in (err, (body or {}).get("error") if isinstance(body, dict) else None):
        if isinstance(e, dict):
            msg = " ".join(str(e.get("message") or "").split())[:200]
            code = e.get("code") or e.get("type")
            parts.append(f"{code}: {msg}" if code else msg)
    return " ".join(p for p in parts if p) or "no response"


def describe(e: Exception) -> str:
    """One line for an openai client error: ``HTTP <status> <class>``, else ``<class>: <message>``."""
    status = getattr(e, "status_code", None)
    kind = type(e).__name__
    return f"HTTP {status} {kind}" if status else f"{kind}: {one_line(e)}"


def one_line(e: Exception) -> str:
    """An exception's message on one line, at most 200 characters."""
    return " ".join(str(e).split())[:200]


class OpenAIEndpointJudge(Judge):
    """What both OpenAI judges share: the endpoint settings, the key check, the request body, the estimate.

    Args (conf/judge/openai*.yaml; ranges checked by :class:`em.config.judge.OpenAIEndpointSchema`):
        name: the judge's name in the responses table.
        model: the API model id.
        base_url: the endpoint; None: ``$OPENAI_BASE_URL``, else the OpenAI API. Kept as ``endpoint`` for the
            client; ``base_url`` and ``identity`` (logged, cached, written) carry it without credentials.
        api_key_env: the environment variable that holds the key (the key itself is never in a config).
        max_retries: the openai client's retries of 429 / 5xx / timeouts / dropped connections.
        timeout: seconds per HTTP request.
        top_logprobs: logprobs asked per reply (1..20; the reference: 20).
        price_input_per_mtok, price_output_per_mtok: USD per million tokens (dry run); None: unknown.
    """

    def __init__(self, *, name: str, model: str, base_url: Optional[str], api_key_env: str, max_retries: int,
                 timeout: float, top_logprobs: int, price_input_per_mtok: Optional[float],
                 price_output_per_mtok: Optional[float]):
        self.name = name
        self.model = model

        self.endpoint = resolve_base_url(base_url)  # what the client connects to (may carry credentials)
        self.base_url = redact_url(self.endpoint)  # what is shown, logged, cached and written: no credentials
        self.api_key_env = api_key_env
        self.max_retries = max_retries
        self.timeout = timeout
        self.top_logprobs = top_logprobs
        self.price_in = price_input_per_mtok
        self.price_out = price_output_per_mtok
        self.identity = identity(self.base_url, model, top_logprobs)

    def check(self) -> None:
        """Raise JudgeError when the key's environment variable is unset or the openai package is missing."""
        if looks_like_secret(self.api_key_env):  # a key pasted in place of the name: never echoed
            raise JudgeError(f"judge.api_key_env: {KEY_ENV_MESSAGE}")
        if not os.environ.get(self.api_key_env):
            raise JudgeError(
                f"judge.api_key_env: environment variable {self.api_key_env} is not set; the {self.name} judge "
                f"({self.model} at {self.base_url}) reads its API key from it"
            )
        try:
            import openai  # noqa: F401
        except ImportError as e:
            raise JudgeError(f"judge={self.name} needs the openai package (pip install openai): {e}") from None

    def check_reachable(self, timeout: Optional[float] = None) -> None:
        """Raise JudgeError unless the endpoint answers one real, free request in ``timeout`` seconds.

        ``GET <base_url>/models`` (lists models; never billed) with the key, through whatever proxy the client
        would use. Any HTTP reply passes (a proxy without that route answers 404: it is alive; a refused key
        is reported by the first real request as before). Nothing listening (refused, unknown host) or a
        server / proxy that accepts the connection and never answers (a stuck proxy: a TCP connect alone
        passes it) fails here, in ``timeout`` seconds, before any answer is sampled -- instead of every
        request burning ``timeout`` x (``max_retries`` + 1) seconds.

        Args:
            timeout: seconds to wait; None: ``min(judge.timeout, 10)``.
        """
        import httpx

        timeout = min(self.timeout, 10.0) if timeout is None else timeout
        key = os.environ.get(self.api_key_env)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            with httpx.Client(timeout=timeout, follow_redirects=True) as client:
                client.get(f"{self.endpoint}/models", headers=headers)
        except httpx.TimeoutException as e:
            what = "connecting" if isinstance(e, httpx.ConnectTimeout) else "waiting for an answer to GET /models"
            raise JudgeError(
                f"judge.base_url: {self.base_url} did not answer in {timeout:g} s ({what}; a stuck server or "
                f"proxy?); no judgment was asked, nothing is lost") from None
        except httpx.HTTPError as e:

            raise JudgeError(
                f"judge.base_url: cannot connect to {self.base_url} ({redact_urls(one_line(e)) or type(e).__name__}); "
                f"is the server running? No judgment was asked; the answers are kept") from None

    def request_body(self, req: JudgeRequest) -> dict[str, Any]:
        """This judge's request body for ``req`` (:func:`request_body`)."""
        return request_body(self.model, req.prompt, self.top_logprobs)

    def estimate(self, requests: list[JudgeRequest]) -> dict[str, Any]:
        """Requests, input tokens (about 4 characters per token), one output token each, and the cost at the
        configured prices (``cost_usd`` None with a note when no price is set)."""
        chars = (requests.prompt_chars() if hasattr(requests, "prompt_chars")  # a dry run's counted plan
                 else sum(len(r.prompt) for r in requests))
        tokens_in = int(chars / CHARS_PER_TOKEN) + PROMPT_OVERHEAD_TOKENS * len(requests)
        out: dict[str, Any] = {"requests": len(requests), "tokens_in_estimate": tokens_in,
                               "tokens_out": len(requests), "cost_usd": None}
        if self.price_in is not None and self.price_out is not None:
            out["cost_usd"] = tokens_in / 1e6 * self.price_in + len(requests) / 1e6 * self.price_out
        else:
            out["note"] = "no price configured (judge.price_input_per_mtok / price_output_per_mtok)"
        return out


__all__ = ["DEFAULT_BASE_URL", "ENDPOINT", "OpenAIEndpointJudge", "batch_line", "describe", "identity",
           "judgment_from_reply", "model_family", "parse_lines", "reply_model_problem", "request_body", "resolve_base_url"]
