"""A decision cache in front of any PolicyEngine, keyed by (revision, entrypoint, input digest).

The digest is SHA-256 of the input's sorted-key JSON: stable within a process, which is all
a process-local cache needs.

Decisions are pure functions of the input and the policies: the policies read the time and
the day's usage from their input, never from the engine (a test checks that no module calls a
non-deterministic built-in). So the same input under the same revision always gets the same
decision, and caching cannot turn a denial into an allow. Engine failures are not cached.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping
from typing import Any

from cachetools import LRUCache

from broker.domain.ports import PolicyEngine


class CachedPolicyEngine:
    """Wraps ``engine``; remembers up to ``maxsize`` decisions, least recently used out first.

    Values are kept as JSON text and parsed on each hit, so no caller can alter a cached
    decision through the object it was given.
    """

    def __init__(self, engine: PolicyEngine, maxsize: int) -> None:
        self.engine = engine
        self._cache: LRUCache[tuple[str, str, bytes], str] = LRUCache(maxsize=maxsize)
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

    def clear(self) -> None:
        """Forget every decision."""
        with self._lock:
            self._cache.clear()

    def close(self) -> None:
        """Close the wrapped engine."""
        close = getattr(self.engine, "close", None)
        if close is not None:
            close()
