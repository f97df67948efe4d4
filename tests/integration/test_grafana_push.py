"""`gpuwatch dashboards push` through grafana-client against a local HTTP endpoint
that answers like Grafana's API (Grafana itself is not installable here)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from gpuwatch.dashboards import DASHBOARDS
from tests.integration.conftest import gpuwatch_cmd, run

pytestmark = pytest.mark.integration
TOKEN = "glsa_secret_token_123"


class FakeGrafana(BaseHTTPRequestHandler):
    requests: ClassVar[list[tuple[str, str, str, Any]]] = []
    status = 200

    def _reply(self, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.requests.append((self.command, self.path, self.headers.get("Authorization", ""),
                              body))
        return body

    def do_GET(self) -> None:
        self._record()
        self._reply([{"uid": "other", "title": "Other"}] if self.path.startswith("/api/folders")
                    else {})

    def do_POST(self) -> None:
        body = self._record()
        if self.path == "/api/folders":
            self._reply({"uid": body.get("uid") or "new", "title": body["title"]})
        else:
            self._reply({"status": "success", "uid": body["dashboard"]["uid"]})

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def grafana() -> Iterator[str]:
    FakeGrafana.requests = []
    FakeGrafana.status = 200
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeGrafana)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_push_creates_the_folder_and_imports_every_dashboard(grafana: str,
                                                            tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    proc = run(gpuwatch_cmd("dashboards", "push", "--url", grafana), cwd=tmp_path,
               extra_env={"GPUWATCH_GRAFANA__TOKEN_FILE": str(token_file)})
    assert proc.returncode == 0, proc.stderr
    assert TOKEN not in proc.stdout + proc.stderr
    assert all(auth == f"Bearer {TOKEN}" for _, _, auth, _ in FakeGrafana.requests)
    posts = [(path, body) for method, path, _, body in FakeGrafana.requests if method == "POST"]
    assert posts[0] == ("/api/folders", {"title": "gpuwatch", "uid": "gpuwatch"})
    imported = [body for path, body in posts if path == "/api/dashboards/db"]
    assert [b["dashboard"]["uid"] for b in imported] == [d.uid for d in DASHBOARDS]
    assert all(b["folderUid"] == "gpuwatch" and b["overwrite"] for b in imported)
    # a URL with a password (basic auth): the success line names the URL without it
    with_password = grafana.replace("http://", "http://admin:URLSECRETpw@")
    again = run(gpuwatch_cmd("dashboards", "push", "--url", with_password), cwd=tmp_path,
                extra_env={"GPUWATCH_GRAFANA__TOKEN_FILE": str(token_file)})
    assert again.returncode == 0 and again.stdout.startswith("pushed "), again.stderr
    assert "URLSECRETpw" not in again.stdout + again.stderr


def test_push_errors_are_one_line_and_never_show_the_token(grafana: str,
                                                           tmp_path: Path) -> None:
    FakeGrafana.status = 500
    proc = run(gpuwatch_cmd("dashboards", "push", "--url", grafana), cwd=tmp_path,
               extra_env={"GPUWATCH_GRAFANA__TOKEN": TOKEN})
    assert proc.returncode == 2
    assert proc.stderr.startswith("gpuwatch: dashboards push to ") and "failed" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and TOKEN not in proc.stderr
    no_token = run(gpuwatch_cmd("dashboards", "push", "--url", grafana), cwd=tmp_path)
    assert no_token.returncode == 2 and "needs a token" in no_token.stderr
