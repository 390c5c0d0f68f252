"""Under a real uvicorn server, an unexpected error's message (which may quote data) is not
logged, and the client gets a 500 problem."""

from __future__ import annotations

import logging

import httpx

from broker.app import create_app
from broker.cli.serving import serve_in_thread
from broker.settings import Settings

SECRET_VALUE = "ROW-VALUE-913000.55"


class Collect(logging.Handler):
    """Keeps every formatted record, tracebacks included."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_unexpected_error_message_never_reaches_the_log(settings: Settings) -> None:
    app = create_app(settings)

    @app.get("/boom")
    def boom() -> None:
        raise ValueError(f"could not convert {SECRET_VALUE}")

    collect = Collect()
    loggers = [logging.getLogger(n) for n in ("uvicorn", "uvicorn.error", "uvicorn.access",
                                              "broker", "broker.api", "")]
    with serve_in_thread(app) as base:
        for lg in loggers:  # after uvicorn configured its logging
            lg.addHandler(collect)
        try:
            r = httpx.get(f"{base}/boom", timeout=10)
        finally:
            for lg in loggers:
                lg.removeHandler(collect)
    text = "\n".join(collect.lines)
    assert r.status_code == 500
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["type"] == "internal-error"
    assert SECRET_VALUE not in r.text
    assert "ValueError" in text  # the failure is logged ...
    assert SECRET_VALUE not in text  # ... without its message
