"""The answers the console keeps for downloads: per principal, for a while, never more than a
bound; and the files they become, where a withheld cell is never a number and no text turns
into a spreadsheet formula."""

from __future__ import annotations

import io

import openpyxl

from broker.console.answers import Labels, ReleasedAnswers, Shown, to_csv, to_xlsx
from broker.domain.principals import Principal, Role
from broker.domain.queries import Cell, CellStatus, Release, SuppressionReason

ECON = Principal(iss="broker-dev", sub="analyst@econ", org="econ",
                 roles=frozenset({Role.CONSUMER}))
ENV = Principal(iss="broker-dev", sub="analyst@env", org="env",
                roles=frozenset({Role.CONSUMER}))
LABELS = Labels(total="Total", withheld="Withheld", status="Status", reason="Reason",
                published="Published", reasons={"dominance": "Dominated"})


def shown(query_id: str = "q1") -> Shown:
    cells = (
        Cell(key={"town": "=HYPERLINK(\"x\")"}, values={"count": 7, "sum_kwh": 12.5},
             status=CellStatus.PUBLISHED),
        Cell(key={"town": "B"}, values=None, status=CellStatus.SUPPRESSED,
             reason=SuppressionReason.DOMINANCE),
        Cell(key={}, values={"count": 9, "sum_kwh": 20.0}, status=CellStatus.PUBLISHED),
    )
    release = Release(query_id=query_id, cells=cells, k=3, policy_revision="r1",
                      field_verdicts={})
    return Shown(release=release, dimensions=("town",), measures=("count", "sum_kwh"),
                 contract_id="c1", purpose="energy-planning")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_answer_is_found_only_by_the_principal_it_was_released_to() -> None:
    answers = ReleasedAnswers()
    answers.keep(ECON, shown())
    assert answers.find(ECON, "q1") == shown()
    assert answers.find(ENV, "q1") is None
    assert answers.find(ECON, "q2") is None


def test_answers_are_forgotten_after_their_time_and_beyond_the_bound() -> None:
    clock = Clock()
    answers = ReleasedAnswers(ttl=60, size=2, clock=clock)
    answers.keep(ECON, shown("q1"))
    clock.now += 61
    assert answers.find(ECON, "q1") is None
    for q in ("q2", "q3", "q4"):
        answers.keep(ECON, shown(q))
    assert [answers.find(ECON, q) is not None for q in ("q2", "q3", "q4")] == [
        False, True, True]


def test_csv_marks_withheld_cells_and_defuses_formulas() -> None:
    text = to_csv(shown(), LABELS).decode("utf-8-sig").splitlines()
    assert text == [
        "town,count,sum_kwh,Status,Reason",
        "\"'=HYPERLINK(\"\"x\"\")\",7,12.5,Published,",
        "B,Withheld: Dominated,Withheld: Dominated,Withheld,dominance",
        "Total,9,20.0,Published,",
    ]


def test_excel_holds_numbers_as_numbers_and_withheld_cells_as_text() -> None:
    book = openpyxl.load_workbook(io.BytesIO(to_xlsx(shown(), LABELS, sheet="Answer")))
    sheet = book["Answer"]
    rows = [list(r) for r in sheet.iter_rows(values_only=True)]
    assert rows[1] == ["'=HYPERLINK(\"x\")", 7, 12.5, "Published", None]
    assert rows[2] == ["B", "Withheld: Dominated", "Withheld: Dominated", "Withheld",
                       "dominance"]
    assert sheet["A2"].data_type == "s"  # text, not a formula
