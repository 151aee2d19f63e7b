"""Security faults: credentials sent to another origin, code run by loading a data folder or a checkpoint."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from clipforge.tasks.enhance.teacher import ChatTeacher

KEY_ENV = "CLIPFORGE_FAULTS_TEST_KEY"


class _Recorder:
    """An HTTP server on a free local port; ``redirect_to`` set: every request gets ``status`` with that
    Location, else a chat-completions answer. Records method, path and headers of every request."""

    def __init__(self, redirect_to: str | None = None, status: int = 302) -> None:
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                server.requests.append(
                    {"method": self.command, "path": self.path, "headers": dict(self.headers)}
                )
                if redirect_to:
                    self.send_response(status)
                    self.send_header("Location", redirect_to + self.path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = b'{"choices": [{"message": {"role": "assistant", "content": "stolen"}}]}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer  # noqa: N815 - http.server's naming

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_the_api_key_never_follows_a_redirect_to_another_origin(status, monkeypatch):
    """Server A (the configured endpoint) redirects to server B on another port: B must never see the key; the
    call fails with an error that says why."""
    monkeypatch.setenv(KEY_ENV, "sk-secret-value")
    b = _Recorder()
    a = _Recorder(redirect_to=b.origin, status=status)
    try:
        teacher = ChatTeacher("m", base_url=a.origin + "/v1", api_key_env=KEY_ENV, max_retries=0)
        (reply,) = teacher.score([Image.new("RGB", (8, 8))], ["a caption"], ["k"])
    finally:
        a.close()
        b.close()
    assert a.requests and a.requests[0]["headers"]["Authorization"] == "Bearer sk-secret-value"
    assert not any("Authorization" in r["headers"] for r in b.requests)
    assert b.requests == []  # refused before any request to the other origin
    assert reply.text is None
    assert "redirect" in reply.error and b.origin in reply.error and "sk-secret" not in reply.error
