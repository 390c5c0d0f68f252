"""The remainder row after the release audit, one source (issue 17's suite found it on a join;
this checks whether the single-source path shares it)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from tests.attacks.county import (
    INDUSTRIES,
    LONE_TOWN,
    RARE_INDUSTRY,
    RARE_TOWN,
    SUM,
    setup,
)
from tests.conftest import World

DAY = "2024-03-01"
#: The first filter, and the same months written so the differencing ledger does not see it.
SPELLINGS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "same": ({"field": "month", "op": "eq", "value": DAY},
             {"field": "month", "op": "eq", "value": DAY}),
    "eq-then-in": ({"field": "month", "op": "eq", "value": DAY},
                   {"field": "month", "op": "in", "value": [DAY]}),
    "in-then-padded-in": ({"field": "month", "op": "in", "value": [DAY]},
                          {"field": "month", "op": "in", "value": [DAY, "2024-03-15"]}),
}


@pytest.mark.parametrize("spelling", list(SPELLINGS))
@pytest.mark.parametrize("seed", [11, 12])
def test_a_withheld_cell_is_not_the_margin_less_the_rest_and_the_remainder(
        world: World, spelling: str, seed: int) -> None:
    """kwh by ordinary town; then by town without the rare industry, with totals and the
    remainder: RARE_TOWN's cell lacks the rare firm, so it must be withheld (``differencing``
    or ``linked``); the remainder must not then let the margin give it back."""
    data, _, cid = setup(world, seed=seed)
    first, second = SPELLINGS[spelling]
    r = world.query(contract_id=cid, group_by=["town"], measures=SUM, filters=[
        first, {"field": "town", "op": "in", "value": data.towns_but(LONE_TOWN)}])
    assert r.status_code == 200, r.text
    alone = {c["key"]["town"]: c["values"] for c in r.json()["cells"]}
    r = world.query(contract_id=cid, group_by=["town"], measures=SUM, totals=True,
                    remainder=True, filters=[second, {"field": "industry", "op": "in", "value": [
                        i for i in INDUSTRIES if i != RARE_INDUSTRY]}])
    if r.status_code == 403:
        return  # refused whole: safe
    assert r.status_code == 200, r.text
    body = r.json()
    cells = {c["key"].get("town", "*"): c for c in body["cells"]}
    rest = body.get("remainder") or {}
    if (cells["*"]["values"] is None or rest.get("values") is None
            or alone.get(RARE_TOWN) is None):
        return  # nothing to difference
    shown = [t for t, c in cells.items() if t != "*" and c["values"] is not None]
    without = (cells["*"]["values"]["sum_kwh"] - rest["values"]["sum_kwh"]
               - sum(cells[t]["values"]["sum_kwh"] for t in shown))
    derived = alone[RARE_TOWN]["sum_kwh"] - without
    truth = data.total("kwh", lambda f: (f.uscc == data.rare) & (f.month == DAY))
    assert not math.isclose(derived, truth), (
        f"rare firm's kwh {truth:g} derived; cells: "
        f"{[(t, c['reason']) for t, c in cells.items()]}, remainder {rest}")
