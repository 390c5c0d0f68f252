"""The root logger configured as ``broker serve`` configures it, writing into a buffer."""

from __future__ import annotations

import io
import logging
import logging.config
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from broker.observability.logs import LogFormat, logging_config


@contextmanager
def captured_log(monkeypatch: pytest.MonkeyPatch, fmt: LogFormat) -> Iterator[io.StringIO]:
    """Configure logging in ``fmt`` at level info; yield what it writes; put it back."""
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    logging.config.dictConfig(logging_config(fmt, "info"))
    handler = root.handlers[-1]
    assert isinstance(handler, logging.StreamHandler)
    monkeypatch.setattr(handler, "stream", stream)
    try:
        yield stream
    finally:
        root.handlers[:], root.level = saved
