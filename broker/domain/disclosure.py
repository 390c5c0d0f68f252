"""The disclosure thresholds a release is held to: set by policy, raised by contracts, applied
by ``broker.disclosure``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rules:
    """The disclosure thresholds a release is held to.

    ``k_min``: distinct enterprises per released number. ``dominance_n``/``dominance_k``: the
    (n, k) rule. ``p_percent``: the p% rule (0 switches it off). ``protection_percent``: the
    share of a small cell's value an attacker must stay uncertain about.
    """

    k_min: int
    dominance_n: int = 2
    dominance_k: float = 85.0
    p_percent: float = 0.0
    protection_percent: float = 10.0

    @property
    def top(self) -> int:
        """How many of the largest contributions the rules need per cell."""
        return max(2, self.dominance_n)
