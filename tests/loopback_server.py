"""A loopback OpenAI-compatible chat-completions server with scripted top-logprobs and injected faults.

Real HTTP/1.1 (keep-alive, Content-Length) on 127.0.0.1, served by asyncio, so the real ``openai`` client
(its retries, timeouts and parsing included) is what the tests exercise. Used by tests/test_judge*.py and
bench/judge_concurrency.py (which runs it as a subprocess: ``python tests/loopback_server.py --delay 0.1``).

Scripting: the reply's top logprobs are ``script[marker]`` for the first marker found in the prompt, else
``default``. Faults (``fault_rate`` of requests, seeded): 429 and 500 (with a short retry-after-ms), slow
(sleeps past the client's timeout), malformed (a 200 whose body is cut-off JSON), no_logprobs (a valid reply
without logprobs) and truncated (Content-Length larger than the body, then the connection closes).

``GET /v1/models`` (the judges' start-up check) answers a model list at once, before any fault, and is
counted in ``probes``, not in ``requests``. ``slow_markers``: a prompt holding one of them is always ``slow``.

Batch API: ``POST /v1/files`` (multipart), ``POST /v1/batches``, ``GET /v1/batches/{id}`` (validating ->
in_progress -> ``batch_outcome`` after ``batch_polls`` polls) and ``GET /v1/files/{id}/content``. Each output
line is the reply the synchronous endpoint would give (same script); a line whose prompt holds one of
``batch_error_markers`` goes to the error file instead, one holding a ``batch_drop_markers`` entry gets no line
at all; ``batch_outcome="failed"`` fails the whole batch with ``batch_fail_message``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import threading
from collections import Counter
from typing import Optional

FAULTS = ("429", "500", "slow", "malformed", "no_logprobs", "truncated")
DEFAULT_TOP = [["85", -0.3], ["90", -1.8], ["80", -2.6], ["CODE", -6.0]]


def completion_body(model: str, top: list[list], prompt_chars: int = 0) -> dict:
    best = max(top, key=lambda x: x[1]) if top else ["", 0.0]
    return {
        "id": "chatcmpl-loopback", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{
            "index": 0, "finish_reason": "length",
            "message": {"role": "assistant", "content": best[0]},
            "logprobs": {"content": [{
                "token": best[0], "logprob": best[1], "bytes": None,
                "top_logprobs": [{"token": t, "logprob": lp, "bytes": None} for t, lp in top],
            }]},
        }],
        "usage": {"prompt_tokens": prompt_chars // 4, "completion_tokens": 1, "total_tokens": prompt_chars // 4 + 1},
    }


class LoopbackServer:
    def __init__(self, *, script: Optional[dict[str, list]] = None, default: Optional[list] = None,
                 fault_rate: float = 0.0, faults: tuple[str, ...] = FAULTS, slow_s: float = 3.0,
                 delay_s: float = 0.0, seed: int = 0, port: int = 0,
                 batch_polls: int = 3, batch_outcome: str = "completed",
                 batch_fail_message: str = "injected batch failure",
                 batch_error_markers: tuple[str, ...] = (), batch_drop_markers: tuple[str, ...] = (),
                 reply_model: Optional[str] = None, slow_markers: tuple[str, ...] = ()):
        self.script = script or {}
        self.reply_model = reply_model  # the model every reply names (None: the requested one)
        self.default = default if default is not None else DEFAULT_TOP
        self.fault_rate = fault_rate
        self.faults = faults
        self.slow_s = slow_s
        self.delay_s = delay_s
        self.rng = random.Random(seed)
        self.port = port
        self.slow_markers = slow_markers
        self.probes = 0  # GET /v1/models (start-up checks)
        self.requests = 0  # every other HTTP request received
        self.ok = 0  # well-formed replies sent
        self.fault_counts: Counter = Counter()
        self.prompts: Counter = Counter()
        self.max_in_flight = 0
        self._in_flight = 0
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._server = None
        self._thread: Optional[threading.Thread] = None
        self.batch_polls = batch_polls
        self.batch_outcome = batch_outcome
        self.batch_fail_message = batch_fail_message
        self.batch_error_markers = batch_error_markers
        self.batch_drop_markers = batch_drop_markers
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.uploads = 0  # POST /v1/files
        self.batches_created = 0  # POST /v1/batches
        self.batch_bodies: list[dict] = []  # every batch input line's body, as uploaded

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def reset_counts(self) -> None:
        self.requests = self.ok = 0
        self.fault_counts.clear()
        self.prompts.clear()

    # ------------------------------------------------------------------ lifecycle
    async def start_async(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, backlog=4096)
        self.port = self._server.sockets[0].getsockname()[1]

    def __enter__(self) -> "LoopbackServer":
        ready = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self.start_async())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        if self._loop is not None:
            async def shutdown() -> None:
                self._server.close()
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                self._loop.stop()

            asyncio.run_coroutine_threadsafe(shutdown(), self._loop)
            self._thread.join(5)

    # ------------------------------------------------------------------ HTTP
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                if headers.get("transfer-encoding", "").lower() == "chunked":
                    body = b""
                    while True:
                        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                        body += await reader.readexactly(size + 2)
                        body = body[:-2]
                        if size == 0:
                            break
                else:
                    body = await reader.readexactly(int(headers.get("content-length", "0")))
                method, _, rest = lines[0].partition(" ")
                path = rest.rpartition(" ")[0].split("?")[0]
                if method == "GET" and path.rstrip("/").endswith("/models"):
                    self.probes += 1
                    await self._json(writer, 200, {"object": "list", "data": [
                        {"id": self.reply_model or "gpt-4o-2024-08-06", "object": "model", "owned_by": "loopback"}]})
                    continue
                self.requests += 1
                self._in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self._in_flight)
                try:
                    if "/files" in path or "/batches" in path:
                        keep = await self._batch_api(method, path, headers, body, writer)
                    else:
                        keep = await self._respond(body, writer)
                finally:
                    self._in_flight -= 1
                if not keep:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, asyncio.CancelledError):
            pass
        finally:
            try:
                writer.close()
            except Exception:
                pass

    async def _respond(self, body: bytes, writer: asyncio.StreamWriter) -> bool:
        req = json.loads(body or b"{}")
        prompt = "".join(m.get("content", "") for m in req.get("messages", []))
        waited = 0.0
        while waited < self.delay_s:  # re-read each tick: a test can hold requests in flight and release them
            await asyncio.sleep(0.05)
            waited += 0.05
        fault = self.rng.choice(self.faults) if self.faults and self.rng.random() < self.fault_rate else None
        if any(m in prompt for m in self.slow_markers):
            fault = "slow"
        if fault:
            self.fault_counts[fault] += 1
        if fault in ("429", "500"):
            payload = json.dumps({"error": {"message": f"injected {fault}", "type": "loopback"}}).encode()
            await self._send(writer, int(fault), payload, extra={"retry-after-ms": "5"})
            return True
        if fault == "slow":
            await asyncio.sleep(self.slow_s)
        if fault == "truncated":
            full = json.dumps(completion_body(self.reply_model or req.get("model", "m"), self.default)).encode()
            writer.write(_head(200, len(full)) + full[: len(full) // 3])
            await writer.drain()
            return False  # close mid-body
        if fault == "malformed":
            text = json.dumps(completion_body(self.reply_model or req.get("model", "m"), self.default)).encode()
            await self._send(writer, 200, text[: len(text) // 2])
            return True
        payload = completion_body(self.reply_model or req.get("model", "m"), self.top_for(prompt), len(prompt))
        if fault == "no_logprobs":
            payload["choices"][0]["logprobs"] = None
        elif fault != "slow":  # a slow reply arrives after the client gave up: it does not count
            self.ok += 1
            self.prompts[prompt] += 1
        await self._send(writer, 200, json.dumps(payload).encode())
        return True

    def top_for(self, prompt: str) -> list:
        for marker, t in self.script.items():
            if marker in prompt:
                return t
        return self.default

    # ------------------------------------------------------------------ Batch API
    async def _batch_api(self, method: str, path: str, headers: dict, body: bytes, writer) -> bool:
        parts = [p for p in path.split("/") if p][1:]  # drop "v1"
        if method == "POST" and parts == ["files"]:
            self.uploads += 1
            fields = _multipart(body, headers.get("content-type", ""))
            fid = f"file-{len(self.files) + 1}"
            self.files[fid] = fields.get("file", b"")
            return await self._json(writer, 200, {
                "id": fid, "object": "file", "bytes": len(self.files[fid]), "created_at": 0,
                "filename": "input.jsonl", "purpose": fields.get("purpose", b"").decode(), "status": "processed"})
        if method == "POST" and parts == ["batches"]:
            self.batches_created += 1
            req = json.loads(body)
            if req.get("input_file_id") not in self.files:
                return await self._json(writer, 404, {"error": {"message": "no such file"}})
            bid = f"batch_{len(self.batches) + 1}"
            self.batches[bid] = {"id": bid, "object": "batch", "endpoint": req.get("endpoint"),
                                 "input_file_id": req["input_file_id"], "completion_window": req.get("completion_window"),
                                 "created_at": 0, "status": "validating", "metadata": req.get("metadata"),
                                 "polls": 0}
            return await self._json(writer, 200, self._batch_view(bid))
        if method == "GET" and len(parts) == 2 and parts[0] == "batches" and parts[1] in self.batches:
            b = self.batches[parts[1]]
            b["polls"] += 1
            if b["status"] not in ("completed", "failed", "expired", "cancelled"):
                if b["polls"] >= self.batch_polls:
                    self._finish_batch(b)
                elif b["polls"] >= 2 and self.batch_outcome != "failed":
                    b["status"] = "in_progress"
            return await self._json(writer, 200, self._batch_view(parts[1]))
        if method == "GET" and len(parts) == 3 and parts[0] == "files" and parts[2] == "content" \
                and parts[1] in self.files:
            data = self.files[parts[1]]
            writer.write(_head(200, len(data), content_type="application/octet-stream") + data)
            await writer.drain()
            return True
        return await self._json(writer, 404, {"error": {"message": f"no route {method} {path}"}})

    def _batch_view(self, bid: str) -> dict:
        return {k: v for k, v in self.batches[bid].items() if k != "polls"}

    def _finish_batch(self, b: dict) -> None:
        lines = [json.loads(ln) for ln in self.files[b["input_file_id"]].decode().splitlines() if ln.strip()]
        if self.batch_outcome == "failed":
            b["status"] = "failed"
            b["errors"] = {"object": "list", "data": [{"code": "invalid_request", "message": self.batch_fail_message,
                                                       "param": None, "line": None}]}
            return
        out, err = [], []
        for n, ln in enumerate(lines):
            body = ln["body"]
            self.batch_bodies.append(body)
            prompt = "".join(m.get("content", "") for m in body.get("messages", []))
            if any(m in prompt for m in self.batch_drop_markers):
                continue
            if any(m in prompt for m in self.batch_error_markers):
                err.append({"id": f"batch_req_{n}", "custom_id": ln["custom_id"], "response": {
                    "status_code": 400, "request_id": f"req_{n}",
                    "body": {"error": {"message": "injected line error", "type": "invalid_request_error",
                                       "code": "injected"}}}, "error": None})
                continue
            self.ok += 1
            self.prompts[prompt] += 1
            out.append({"id": f"batch_req_{n}", "custom_id": ln["custom_id"], "response": {
                "status_code": 200, "request_id": f"req_{n}",
                "body": completion_body(self.reply_model or body.get("model", "m"), self.top_for(prompt), len(prompt))}, "error": None})
        b["status"] = self.batch_outcome
        b["request_counts"] = {"total": len(lines), "completed": len(out), "failed": len(err)}
        for key, rows in (("output_file_id", out), ("error_file_id", err)):
            if rows:
                fid = f"file-{len(self.files) + 1}"
                self.files[fid] = ("\n".join(json.dumps(r) for r in rows) + "\n").encode()
                b[key] = fid

    async def _json(self, writer, status: int, obj: dict) -> bool:
        await self._send(writer, status, json.dumps(obj).encode())
        return True

    async def _send(self, writer, status: int, payload: bytes, extra: Optional[dict] = None) -> None:
        writer.write(_head(status, len(payload), extra) + payload)
        await writer.drain()


def _multipart(body: bytes, content_type: str) -> dict[str, bytes]:
    """name -> content of each part of a multipart/form-data body."""
    boundary = content_type.partition("boundary=")[2].strip().strip('"').encode()
    out: dict[str, bytes] = {}
    for part in body.split(b"--" + boundary):
        head, sep, content = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        name = head.decode("latin-1").partition('name="')[2].partition('"')[0]
        out[name] = content[:-2] if content.endswith(b"\r\n") else content
    return out


def _head(status: int, length: int, extra: Optional[dict] = None, content_type: str = "application/json") -> bytes:
    reason = {200: "OK", 404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error"}.get(status, "X")
    lines = [f"HTTP/1.1 {status} {reason}", f"content-type: {content_type}", f"content-length: {length}",
             "connection: keep-alive"] + [f"{k}: {v}" for k, v in (extra or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--delay", type=float, default=0.0, help="seconds each request sleeps")
    ap.add_argument("--fault-rate", type=float, default=0.0)
    args = ap.parse_args()
    server = LoopbackServer(delay_s=args.delay, fault_rate=args.fault_rate, port=args.port)

    async def go() -> None:
        await server.start_async()
        print(server.port, flush=True)  # the parent reads the port from the first line
        await asyncio.Event().wait()

    asyncio.run(go())


if __name__ == "__main__":
    main()
