"""A fake Hugging Face Hub on 127.0.0.1, just enough for `HfApi.create_repo` + `upload_folder`.

    with fake_hub() as hub:
        os.environ["HF_ENDPOINT"] = hub.url
        ...                     # push
        hub.files["user/repo"]  # {path in repo: bytes}

What `upload_folder` sends (huggingface_hub 1.x, with hf_xet installed it takes the streamed
pipeline of `_upload_pipeline.py`; without it, `create_commit`):

- `POST /api/repos/create` (`create_repo`): 200 with the repo URL, 409 if it exists (the client
  passes `exist_ok=True` and takes the 409 as "already there").
- `POST /api/validate-yaml`, only when the folder holds a `README.md` (checks the model card).
- `POST /api/models/{repo}/preupload/{revision}`: the client asks, per file, "regular" (bytes go
  base64 in the commit itself) or "lfs" (bytes go to LFS / Xet storage first, the commit only
  names their sha256). This fake answers "regular" for every file, whatever its size or name,
  and the client honours it: no LFS batch call and no Xet session is ever opened, so nothing
  here needs to speak those protocols. (The real Hub answers "lfs" for `*.safetensors` and
  large files; with hf_xet installed those would go to Xet storage.)
- `POST /api/models/{repo}/commit/{revision}`: NDJSON, a `header` line and one `file` line per
  file (`{"path", "content" (base64), "encoding": "base64"}`); answered with `commitUrl` and
  `commitOid`.
- `GET /api/models/{repo}` and `.../revision/{rev}` (`repo_info`): only when every file is
  unchanged (the pipeline then reports the latest commit), or after a 403 on create.

Every request's path and `Authorization` header is recorded; an unknown route gets a 404 and
lands in `unexpected`. `fail[endpoint] = status` makes that endpoint ("create", "validate-yaml",
"preupload", "commit", "info") answer with that status.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

_REPO = r"(?P<repo>[^/]+(?:/[^/]+)?)"
_ROUTES: list[tuple[str, str, re.Pattern[str]]] = [
    ("POST", "create", re.compile(r"/api/repos/create")),
    ("POST", "validate-yaml", re.compile(r"/api/validate-yaml")),
    ("POST", "preupload", re.compile(rf"/api/models/{_REPO}/preupload/(?P<rev>[^/]+)")),
    ("POST", "commit", re.compile(rf"/api/models/{_REPO}/commit/(?P<rev>[^/]+)")),
    ("GET", "info", re.compile(rf"/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?")),
]


def _route(method: str, path: str) -> tuple[str, re.Match[str]] | None:
    for route_method, name, pattern in _ROUTES:
        match = pattern.fullmatch(path)
        if route_method == method and match:
            return name, match
    return None


@dataclass
class FakeHub:
    """The server's state; read it from the test, while or after the server runs."""

    url: str = ""
    files: dict[str, dict[str, bytes]] = field(default_factory=dict)  # repo -> path -> bytes
    private: dict[str, bool] = field(default_factory=dict)  # repo -> private?
    commits: list[dict] = field(default_factory=list)  # {"repo", "revision", "summary", "oid"}
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path)
    authorizations: list[str | None] = field(default_factory=list)  # one per request
    bodies: list[bytes] = field(default_factory=list)  # every request body, raw
    unexpected: list[tuple[str, str]] = field(default_factory=list)
    fail: dict[str, int] = field(default_factory=dict)  # endpoint name -> status to answer
    lock: threading.Lock = field(default_factory=threading.Lock)

    def head(self, repo: str) -> str:
        """The oid of the repo's last commit (40 zeros before any)."""
        oids = [c["oid"] for c in self.commits if c["repo"] == repo]
        return oids[-1] if oids else "0" * 40


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_POST(self) -> None:
            self._dispatch("POST")

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                data = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        self.rfile.readline()
                        return data
                    data += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _send(self, status: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _dispatch(self, method: str) -> None:
            path = urlsplit(self.path).path
            body = self._body()
            with hub.lock:
                hub.requests.append((method, path))
                hub.authorizations.append(self.headers.get("Authorization"))
                hub.bodies.append(body)
            route = _route(method, path)
            if route is None:
                with hub.lock:
                    hub.unexpected.append((method, path))
                self._send(404, {"error": f"fake hub: no route for {method} {path}"})
                return
            name, match = route
            if name in hub.fail:
                self.send_response(hub.fail[name])
                message = f"fake hub: {name} refused"
                self.send_header("X-Error-Message", message)
                data = json.dumps({"error": message}).encode()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
            getattr(self, "_" + name.replace("-", "_"))(body, **params)

        def _create(self, body: bytes) -> None:
            payload = json.loads(body)
            repo = "/".join(p for p in (payload.get("organization"), payload["name"]) if p)
            with hub.lock:
                if repo in hub.files:
                    # The real Hub's 409 names the repo URL too; the client reads it.
                    self._send(
                        409,
                        {
                            "error": "You already created this model repo",
                            "url": f"{hub.url}/{repo}",
                        },
                    )
                    return
                hub.files[repo] = {}
                hub.private[repo] = payload.get("visibility") == "private" or bool(
                    payload.get("private")
                )
            self._send(200, {"url": f"{hub.url}/{repo}", "name": repo, "id": repo})

        def _validate_yaml(self, body: bytes) -> None:
            self._send(200, {"errors": [], "warnings": []})

        def _preupload(self, body: bytes, repo: str, rev: str) -> None:
            if repo not in hub.files:
                self._repo_not_found(repo)
                return
            files = json.loads(body)["files"]
            answer = [
                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                for f in files
            ]
            self._send(200, {"files": answer, "commitOid": hub.head(repo)})

        def _commit(self, body: bytes, repo: str, rev: str) -> None:
            if repo not in hub.files:
                self._repo_not_found(repo)
                return
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            header, operations = lines[0], lines[1:]
            if header.get("key") != "header":
                self._send(400, {"error": "first line must be the header"})
                return
            received: dict[str, bytes] = {}
            for op in operations:
                if op["key"] != "file" or op["value"].get("encoding") != "base64":
                    self._send(400, {"error": f"fake hub: unsupported operation {op['key']}"})
                    return
                received[op["value"]["path"]] = base64.b64decode(op["value"]["content"])
            oid = hashlib.sha1(body).hexdigest()
            with hub.lock:
                hub.files[repo].update(received)
                hub.commits.append(
                    {
                        "repo": repo,
                        "revision": rev,
                        "summary": header["value"]["summary"],
                        "oid": oid,
                    }
                )
            self._send(
                200,
                {
                    "success": True,
                    "commitOid": oid,
                    "commitUrl": f"{hub.url}/{repo}/commit/{oid}",
                    "hookOutput": "",
                },
            )

        def _info(self, body: bytes, repo: str, rev: str = "main") -> None:
            if repo not in hub.files:
                self._repo_not_found(repo)
                return
            self._send(
                200,
                {
                    "id": repo,
                    "sha": hub.head(repo),
                    "private": hub.private.get(repo, False),
                    "siblings": [{"rfilename": path} for path in sorted(hub.files[repo])],
                },
            )

        def _repo_not_found(self, repo: str) -> None:
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound")
            data = json.dumps({"error": f"Repository {repo} not found"}).encode()
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


@contextlib.contextmanager
def fake_hub() -> Iterator[FakeHub]:
    """Run a fake Hub on a free port of 127.0.0.1 for the duration of the block."""
    hub = FakeHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    server.daemon_threads = True
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-hub", daemon=True
    )
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
