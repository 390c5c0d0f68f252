"""A tiny site on loopback that sends the console's strict CSP, with pages that go right and
wrong on purpose: what the harness's own tests drive, without the console."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'"
CHINESE = "数据经纪人控制台显示被抑制的单元格及其原因"

PICTURE = (b'<svg xmlns="http://www.w3.org/2000/svg" width="40" height="20">'
           b'<rect width="40" height="20" fill="#2a6"/></svg>')


def _page(body: str, *, head: str = "") -> bytes:
    return (f'<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">'
            f"<title>样例页面</title>{head}</head><body><main>{body}</main></body></html>"
            ).encode()


PAGES: dict[str, tuple[str, bytes]] = {
    "/good": ("text/html; charset=utf-8", _page(
        f'<h1 id="zh">{CHINESE}</h1><img src="/picture.svg" alt="示意图">'
        '<a href="#q">跳到查询</a><label for="q">查询</label><input id="q" name="q" type="text">'
        '<button type="button">运行</button>'
        '<script src="/fine.js"></script>')),
    "/bad": ("text/html; charset=utf-8", _page(
        '<h1>缺少替代文本</h1><img src="/picture.svg"><input type="text">')),
    "/console-error": ("text/html; charset=utf-8", _page(
        '<h1>控制台错误</h1><script src="/console-error.js"></script>')),
    "/inline-script": ("text/html; charset=utf-8", _page(
        "<h1>内联脚本</h1><script>document.title = 'ran';</script>")),
    "/uncaught": ("text/html; charset=utf-8", _page(
        '<h1>未捕获的异常</h1><script src="/throw.js"></script>')),
    "/broken-image": ("text/html; charset=utf-8", _page(
        '<h1>服务器错误</h1><img src="/server-error.svg" alt="坏图">')),
    "/download": ("text/html; charset=utf-8", _page(
        '<h1>下载</h1><a id="csv" href="/cells.csv">下载表格</a>')),
    "/cells.csv": ("text/csv; charset=utf-8", "行业,企业数\n纺织,12\n".encode()),
    "/fine.js": ("text/javascript", b"document.body.dataset.ready = 'yes';"),
    "/console-error.js": ("text/javascript", b"console.error('sample failure');"),
    "/throw.js": ("text/javascript", b"throw new TypeError('sample uncaught');"),
    "/picture.svg": ("image/svg+xml", PICTURE),
}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/favicon.ico":
            self.send_response(HTTPStatus.NO_CONTENT)
            self.end_headers()
            return
        if self.path == "/server-error.svg":
            self.send_response(HTTPStatus.INTERNAL_SERVER_ERROR)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path not in PAGES:  # an error page with a body, as the console sends
            body = _page("<h1>未找到</h1>")
            self.send_response(HTTPStatus.NOT_FOUND)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Security-Policy", CSP)
            self.end_headers()
            self.wfile.write(body)
            return
        content_type, body = PAGES[self.path]
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        if content_type.startswith("text/csv"):
            self.send_header("Content-Disposition", 'attachment; filename="cells.csv"')
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", CSP)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the tests read the browser's record, not this one."""


@contextmanager
def serving() -> Iterator[str]:
    """Serve the sample pages on a free loopback port; yield the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="session")
def sample_site() -> Iterator[str]:
    """Base URL of the sample site, for the session."""
    with serving() as base:
        yield base
