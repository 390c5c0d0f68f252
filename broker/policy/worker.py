"""One evaluation at a time on a dedicated thread, with a deadline for the caller."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypeVar

from broker.domain.errors import BrokerError, Unavailable

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


class InProcessEngine:
    """What the in-process Rego engines share: the revision they were built from, one worker
    thread with a deadline, and every failure turned into Unavailable (fail closed)."""

    def __init__(self, name: str, revision: str, timeout: float) -> None:
        self._worker = SerialWorker(name, timeout)
        self._revision = revision

    @property
    def revision(self) -> str:
        """Content hash of the policies this engine evaluates."""
        return self._revision

    def _call(self, fn: Callable[..., T], *args: object) -> T:
        try:
            return self._worker.call(fn, *args)
        except BrokerError:
            raise
        except Exception as exc:
            raise Unavailable("The policy engine failed; nothing was released.") from exc

    def close(self) -> None:
        """Stop the worker thread."""
        self._worker.close()
