"""``broker policy``: test the Rego policies on every engine and package them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from broker.settings import Settings

policy_app = typer.Typer(help="Test and package the Rego policies.", no_args_is_help=True)


@policy_app.command("test")
def policy_test(
    opa_url: Annotated[str | None, typer.Option(
        help="Also check a running OPA server (it must hold these policies)")] = None,
) -> None:
    """Run the Rego unit tests (*_test.rego) on the OPA Go engine, then every decision case
    (policies/cases) on every engine: regopy, the OPA Go engine and, with --opa-url, an OPA
    server. Exit 1 on a failing test, a wrong decision or any disagreement between engines."""
    from broker.domain.ports import PolicyEngine
    from broker.policy.cases import load_cases
    from broker.policy.conformance import check_all
    from broker.policy.embedded import EmbeddedPolicyEngine
    from broker.policy.golib import GoEngineMissing, GoPolicyEngine, run_rego_tests
    from broker.policy.opa import OpaServerPolicyEngine

    policy_dir = Settings().policy_dir
    console = Console()
    try:
        report = run_rego_tests(policy_dir)
        engines: list[PolicyEngine] = [EmbeddedPolicyEngine(policy_dir), GoPolicyEngine(policy_dir)]
    except GoEngineMissing as exc:
        console.print(f"[red]error[/]: {exc}")
        raise typer.Exit(1) from exc
    if not report.tests:
        console.print("[red]error[/]: no test_* rules in any *_test.rego")
        raise typer.Exit(1)
    for test in report.failed:
        detail = f": {test.error}" if test.error else ""
        console.print(f"[red]FAIL[/] {test.module}: {test.name}{detail}")
    passed = len(report.tests) - len(report.failed)
    console.print(f"Rego unit tests (OPA Go engine): {passed} passed, {len(report.failed)} failed")
    for module, percent in report.coverage.items():
        console.print(f"  coverage {module}: {percent:.1f}%")
    if opa_url:
        engines.append(OpaServerPolicyEngine(opa_url, policy_dir))
    outcomes = check_all(engines, load_cases(policy_dir))
    bad = [o for o in outcomes if not o.ok]
    for o in bad:
        console.print(f"[red]FAIL[/] {o.case.file}: {o.case.name}")
        for name, wrong in o.wrong.items():
            console.print(f"    {name} got {wrong}")
        for name, error in o.errors.items():
            console.print(f"    {name} failed: {error}")
        if o.disagreement:
            console.print("    engines disagree:")
            for name, text in o.disagreement.items():
                console.print(f"      {name}: {text}", soft_wrap=True)
    names = ", ".join(str(getattr(e, "name", "?")) for e in engines)
    console.print(f"decision cases on {names}: {len(outcomes) - len(bad)} passed, "
                  f"{len(bad)} failed")
    console.print(f"policy revision {engines[0].revision}")
    if bad or report.failed:
        raise typer.Exit(1)


@policy_app.command("bundle")
def policy_bundle(
    output: Annotated[Path, typer.Option(help="Bundle file to write")] = Path(
        "broker-policies.tar.gz"),
) -> None:
    """Write the policies and their data as an OPA bundle (.tar.gz with .manifest)."""
    from broker.policy.bundle_file import write_bundle

    revision = write_bundle(Settings().policy_dir, output)
    Console().print(f"wrote {output} (revision {revision})")
