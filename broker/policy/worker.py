"""One evaluation at a time on a dedicated thread, with a deadline for the caller."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

from broker.domain.errors import Unavailable

T = TypeVar("T")


class SerialWorker:
    """Runs calls one at a time on its own thread; a caller waits at most ``timeout`` seconds.

    Rego engines bound to native code cannot be interrupted. A call that never returns keeps
    the worker, so every later call times out as well: the broker then fails closed (503)
    instead of deciding without its policy.
    """

    def __init__(self, name: str, timeout: float) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._timeout = timeout

    def call(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` on the worker; Unavailable on timeout, its own exception otherwise."""
        future = self._pool.submit(fn, *args)
        try:
            return future.result(timeout=self._timeout)
        except FutureTimeout as exc:
            future.cancel()
            raise Unavailable("The policy engine timed out; nothing was released.") from exc

    def close(self) -> None:
        """Stop taking calls; one still running is abandoned."""
        self._pool.shutdown(wait=False, cancel_futures=True)
