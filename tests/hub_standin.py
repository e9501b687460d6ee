"""A loopback stand-in for the Hugging Face Hub: the routes ``HfApi.create_repo`` and ``HfApi.upload_folder``
call for small files (huggingface_hub 1.x / 2.x), over real HTTP on 127.0.0.1.

* ``POST /api/repos/create`` -> ``{"url": ...}`` (the payload recorded: name, organization, visibility)
* ``POST /api/validate-yaml`` -> no errors (the model card's front matter)
* ``POST /api/models/<ns>/<name>/preupload/<rev>`` -> ``uploadMode: "regular"`` for every file (no LFS / Xet)
* ``POST /api/models/<ns>/<name>/commit/<rev>`` -> the ndjson commit: each file's base64 content is stored in
  ``repos[repo_id][path]``; replies a commit id and URL.

Every request is recorded (method, path, headers with lower-case names, body). ``fail_status`` answers every request with that
status instead (a Hub outage).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

REPO_ROUTE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/(?P<op>preupload|commit)/(?P<rev>[^/?]+)")


class HubStandIn:
    """Start with ``with HubStandIn() as hub:``; ``hub.url`` is the endpoint to pass to em."""

    def __init__(self, fail_status: Optional[int] = None):
        self.fail_status = fail_status
        self.requests: list[dict[str, Any]] = []
        self.created: list[dict[str, Any]] = []
        self.commits: list[dict[str, Any]] = []
        self.repos: dict[str, dict[str, bytes]] = {}
        self._server: Optional[ThreadingHTTPServer] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        self.requests.append({"method": method, "path": path, "headers": headers, "body": body})
        if self.fail_status:
            return self.fail_status, {"error": "stand-in: injected failure"}
        if method == "POST" and path == "/api/repos/create":
            payload = json.loads(body)
            self.created.append(payload)
            repo = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
            self.repos.setdefault(repo, {})
            return 200, {"url": f"{self.url}/{repo}", "name": repo}
        if method == "POST" and path == "/api/validate-yaml":
            return 200, {"errors": [], "warnings": []}
        m = REPO_ROUTE.match(path)
        if method == "POST" and m and m["op"] == "preupload":
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                                   for f in files]}
        if method == "POST" and m and m["op"] == "commit":
            lines = [json.loads(x) for x in body.decode().splitlines() if x.strip()]
            header = next(x["value"] for x in lines if x["key"] == "header")
            files = {x["value"]["path"]: base64.b64decode(x["value"]["content"]) for x in lines if x["key"] == "file"}
            self.repos.setdefault(m["repo"], {}).update(files)
            oid = hashlib.sha1(body).hexdigest()
            self.commits.append({"repo": m["repo"], "summary": header["summary"], "files": files, "oid": oid})
            return 200, {"commitUrl": f"{self.url}/{m['repo']}/commit/{oid}", "commitOid": oid,
                         "pullRequestUrl": None}
        return 404, {"error": f"stand-in: no route {method} {path}"}

    def __enter__(self) -> "HubStandIn":
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                status, reply = hub.handle(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

            def log_message(self, *args: Any) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
