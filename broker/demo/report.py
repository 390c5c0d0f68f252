"""The demo story as a printed report (rich tables)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from broker.demo.story import StoryResult


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def render(result: StoryResult, console: Console) -> None:
    """Print every part of the story."""
    console.print(Panel.fit("Data-sharing broker: the story on embedded defaults",
                            style="bold"))

    orgs = Table(title="1. Organisations registered by the operator")
    for col in ("id", "name", "kind"):
        orgs.add_column(col)
    for org in result.orgs:
        orgs.add_row(org["id"], org["name"], org["kind"])
    console.print(orgs)

    datasets = Table(title="2. Datasets registered by providers (stored inside the broker)")
    for col in ("name", "owner", "rows", "fields (role)", "sha256"):
        datasets.add_column(col)
    for d in result.datasets.values():
        fields = ", ".join(f"{f['name']} ({f['role']})" for f in d["fields"])
        datasets.add_row(d["name"], d["owner_org"], _fmt(d["rows"]), fields, d["sha256"][:16])
    console.print(datasets)

    contracts = Table(title="3. Usage contracts (offered by the provider, accepted by consumer)")
    for col in ("dataset", "provider -> consumer", "purposes", "fields", "k_min", "status"):
        contracts.add_column(col)
    for name, c in result.contracts.items():
        contracts.add_row(
            name, f"{c['provider_org']} -> {c['consumer_org']}", ", ".join(c["purposes"]),
            ", ".join(f"{k}:{v}" for k, v in c["fields"].items()), str(c["k_min"]), c["status"],
        )
    console.print(contracts)

    for title, dry in result.explanations.items():
        table = Table(title=f"4. economic-bureau dry-runs: {title} (nothing released)")
        for col in ("field", "verdict", "reasons"):
            table.add_column(col)
        for name, verdict in sorted(dry["fields"].items()):
            table.add_row(name, verdict, ", ".join(dry["field_reasons"].get(name, [])) or "-")
        console.print(table)
        console.print(f"   allowed: {dry['allow']}; k {dry['k']}; queries left today "
                      f"{dry['quota_remaining']}; policy {dry['policy_revision']}")

    for title, answer in result.queries.items():
        table = Table(title=f"4. economic-bureau asks: {title} (k = {answer['k']})")
        keys = list(max((cell["key"] for cell in answer["cells"]), key=len, default={}))
        names = sorted({k for cell in answer["cells"] for k in (cell["values"] or {})})
        for col in [*keys, *names, "status"]:
            table.add_column(col, justify="right" if col in names else "left")
        for cell in answer["cells"]:
            values = cell["values"] or {}
            status = cell["status"] + (f" ({cell['reason']})" if cell.get("reason") else "")
            style = "dim" if cell["status"] == "suppressed" else None
            table.add_row(*[_fmt(cell["key"][k]) if k in cell["key"] else "(total)"
                            for k in keys],
                          *[_fmt(values.get(n)) for n in names], status, style=style)
        if answer.get("remainder"):
            rest = answer["remainder"]
            status = rest["status"] + (f" ({rest['reason']})" if rest.get("reason") else "")
            table.add_row(*["(withheld cells)" for _ in keys],
                          *[_fmt((rest["values"] or {}).get(n)) for n in names], status,
                          style="italic")
        console.print(table)
        policy, receipt = answer["policy"], answer["receipt"]
        console.print(
            f"   suppressed: {answer['suppressed'] or 'none'}; policy {policy['revision']}"
            f" verdicts {policy['fields']}; receipt: audit seq {receipt['seq']}"
            f" leaf {receipt['leaf_hash'][:16]}..."
        )

    refusals = Table(title="5. Refused, with the policy's reasons (each refusal is audited)")
    for col in ("who", "what", "status", "reasons"):
        refusals.add_column(col)
    for step in result.refusals:
        refusals.add_row(step.actor, step.action, str(step.status),
                         ", ".join(step.body.get("reasons", [])))
    console.print(refusals)

    provider = Table(title="6. grid-company sees every use of its data")
    for col in ("seq", "when", "who", "org", "purpose", "allowed", "reasons"):
        provider.add_column(col)
    for item in result.provider_view:
        e = item["entry"]
        provider.add_row(str(e["seq"]), e["ts"][:19], e["actor"]["sub"], e["actor"]["org"],
                         e["purpose"] or "-", str(e["decision"]["allowed"]),
                         ", ".join(e["decision"]["reasons"]) or "-")
    console.print(provider)

    actions = Counter((i["entry"]["action"], i["entry"]["decision"]["allowed"])
                      for i in result.audit_entries)
    log = Table(title="7. The audit log as security staff read it")
    for col in ("action", "allowed", "entries"):
        log.add_column(col)
    for (action, allowed), count in sorted(actions.items()):
        log.add_row(action, str(allowed), str(count))
    console.print(log)
    v = result.verify
    verdict = (
        "[bold green]VALID[/]" if v["valid"]
        else f"[bold red]BROKEN at seq {v['first_bad_seq']}: {v['reason']}[/]"
    )
    console.print(f"8. Chain verification: {verdict}; size {v['size']}, Merkle root {v['root']}")
