"""A decision cache in front of any PolicyEngine, keyed by (revision, entrypoint, input digest).

The digest is SHA-256 of the input's sorted-key JSON: stable within a process, which is all
a process-local cache needs. A caller that knows a cheaper key, one its input document is a
function of, may :meth:`~CachedPolicyEngine.remember` a parsed decision under it instead
(the flow decision's terms part does: broker.policy.inputs.FlowRequest.key).

Decisions are pure functions of the input and the policies: the policies read the time and
the day's usage from their input, never from the engine (a test checks that no module calls a
non-deterministic built-in). So the same input under the same revision always gets the same
decision, and caching cannot turn a denial into an allow. Engine failures are not cached.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from typing import Any, TypeVar

from cachetools import LRUCache

from broker.domain.ports import PolicyEngine

T = TypeVar("T")


class _Key:
    """A key whose hash is computed once: the LRU order hashes it again on every hit."""

    __slots__ = ("_hash", "value")

    def __init__(self, value: Hashable) -> None:
        self.value = value
        self._hash = hash(value)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Key) and self._hash == other._hash and self.value == other.value


_MISSING = object()


class CachedPolicyEngine:
    """Wraps ``engine``; remembers up to ``maxsize`` decisions, least recently used out first.

    Values are kept as JSON text and parsed on each hit, so no caller can alter a cached
    decision through the object it was given.
    """

    def __init__(self, engine: PolicyEngine, maxsize: int) -> None:
        self.engine = engine
        self._cache: LRUCache[tuple[str, str, bytes], str] = LRUCache(maxsize=maxsize)
        self._values: OrderedDict[_Key, Any] = OrderedDict()
        self._maxsize = maxsize
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def name(self) -> str:
        """The wrapped engine's name."""
        return str(getattr(self.engine, "name", "engine"))

    @property
    def revision(self) -> str:
        """The wrapped engine's revision."""
        return self.engine.revision

    def evaluate(self, entrypoint: str, input: Mapping[str, Any]) -> Any:
        """The cached decision for this input, or the engine's (then remembered)."""
        text = json.dumps(input, sort_keys=True, separators=(",", ":"), allow_nan=False)
        key = (self.engine.revision, entrypoint, hashlib.sha256(text.encode()).digest())
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self.hits += 1
        if cached is not None:
            return json.loads(cached)
        value = self.engine.evaluate(entrypoint, input)
        with self._lock:
            self.misses += 1
            # Only a decision of the expected revision is kept: one from a server running
            # other policies is refused by the caller, and must be asked for again next time.
            if isinstance(value, dict) and value.get("revision") == key[0]:
                self._cache[key] = json.dumps(value)
        return value

    def remember(self, key: Hashable, compute: Callable[[], T]) -> T:
        """The value remembered under ``key`` for the wrapped engine's current revision, or
        ``compute()``'s (then remembered, least recently used out first).

        ``compute`` must be a pure function of ``key`` under one policy revision and return an
        immutable value; whatever it raises propagates and nothing is remembered, so an engine
        failure or a malformed decision is asked for again next time.
        """
        full = _Key((self.engine.revision, key))
        with self._lock:
            value = self._values.get(full, _MISSING)
            if value is not _MISSING:
                self._values.move_to_end(full)
                self.hits += 1
                return value  # type: ignore[no-any-return]
        value = compute()
        with self._lock:
            self.misses += 1
            self._values[full] = value
            if len(self._values) > self._maxsize:
                self._values.popitem(last=False)
        return value

    def clear(self) -> None:
        """Forget every decision."""
        with self._lock:
            self._cache.clear()
            self._values.clear()

    def close(self) -> None:
        """Close the wrapped engine."""
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()
