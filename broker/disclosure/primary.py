"""Primary suppression: the rules that judge each cell on its own, and its protection levels.

A cell that fails a rule is *sensitive*. Besides being withheld, it gets a protection level
per released quantity: how wide the interval must stay that an attacker can derive for it from
everything else published (the margins included). Complementary suppression then guarantees
those intervals. All thresholds come from the usage contract, raised to the floors in the
policy data.
"""

from __future__ import annotations

import numpy as np

from broker.disclosure.cells import ENTITIES, CellTable
from broker.domain.disclosure import Rules


def frequency_k(table: CellTable) -> np.ndarray:
    """Per cell, the fewest distinct enterprises behind any of its released numbers.

    A sum over a cell of ten enterprises where only one reported the field is that one
    enterprise's value: each measure is protected by the enterprises that contribute to it.
    """
    k = table.entities.copy()
    for stats in table.fields.values():
        k = np.minimum(k, stats.contributors)
    return k


def below_frequency(table: CellTable, rules: Rules) -> np.ndarray:
    """Frequency (threshold) rule: fewer than ``k_min`` distinct enterprises contribute.

    The unit is the enterprise, not the row: an enterprise with thirty monthly rows is one
    contributor. This is the minimum-frequency rule of the ESSnet handbook (Hundepool et al.,
    *Statistical Disclosure Control*, 2012, section 4.2.1).
    """
    return frequency_k(table) < rules.k_min


def dominance_excess(table: CellTable, rules: Rules) -> dict[str, np.ndarray]:
    """(n, k)-dominance rule: per field, how far the cell total falls short of safety.

    A cell is sensitive when its ``n`` largest contributors hold more than ``k`` percent of
    the total (Hundepool et al. 2012, section 4.2.2; tau-ARGUS and sdcTable use n=2, k=85 by
    default). Contributions are taken in absolute value, as tau-ARGUS does for magnitudes that
    can be negative. The cell is safe once an attacker's upper estimate of the total is at
    least ``100 * top_n / k``: the shortfall ``100 * top_n / k - total`` is its protection
    level (tau-ARGUS manual, "protection levels of the dominance rule").
    """
    out = {}
    for name, stats in table.fields.items():
        top_n = stats.top[..., : rules.dominance_n].sum(axis=-1)
        excess = 100.0 * top_n / rules.dominance_k - stats.abs_total
        out[name] = np.where((stats.abs_total > 0) & (excess > 0), excess, 0.0)
    return out


def p_percent_excess(table: CellTable, rules: Rules) -> dict[str, np.ndarray]:
    """p% rule: per field, how much the second-largest contributor learns too much.

    The second-largest contributor knows its own value x2, so from the total T it estimates
    the largest, x1, to within T - x1 - x2. The cell is sensitive when that is less than p% of
    x1; the protection level is the shortfall ``p/100 * x1 - (T - x1 - x2)`` (Hundepool et
    al. 2012, section 4.2.3; the prior-posterior rule with q = 100%).
    """
    out = {}
    for name, stats in table.fields.items():
        if rules.p_percent <= 0:
            out[name] = np.zeros(stats.abs_total.shape)
            continue
        x1, x2 = stats.top[..., 0], stats.top[..., 1]
        excess = rules.p_percent / 100.0 * x1 - (stats.abs_total - x1 - x2)
        out[name] = np.where((x1 > 0) & (excess > 0), excess, 0.0)
    return out


def small_cell_protection(table: CellTable, rules: Rules) -> dict[str, np.ndarray]:
    """Protection levels of a cell withheld for its enterprise count (or differencing).

    Its magnitudes must stay uncertain by ``protection_percent`` of their value; its count of
    enterprises must not be derivable exactly (a level of one), so an empty cell cannot be
    told from a small one.
    """
    out = {ENTITIES: np.ones(table.entities.shape)}
    for name, stats in table.fields.items():
        out[name] = np.abs(stats.total) * rules.protection_percent / 100.0
    return out
