"""`wallwatch censor ...`: run the emulated firewall, or check a policy file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

censor_app = typer.Typer(
    name="censor",
    help="The emulated firewall: NFQUEUE router with rules as data.",
    no_args_is_help=True,
)


@censor_app.command("run")
def run_command(
    policy: Path = typer.Option(..., "--policy", help="Policy YAML file (reloaded on SIGHUP)."),
    queue: int = typer.Option(100, "--queue", help="NFQUEUE number."),
    status_file: Optional[Path] = typer.Option(None, "--status-file", help="JSON status, rewritten atomically."),
    fail_open: bool = typer.Option(False, "--fail-open/--fail-closed",
                                   help="If the censor dies: let traffic through (--queue-bypass) or drop it."),
    log: Optional[Path] = typer.Option(None, "--log", help="JSON-lines decision log (default: stderr)."),
    offload: bool = typer.Option(True, "--offload/--no-offload", hidden=True,
                                 help="Hand decided flows to the kernel (connmark). --no-offload is for benchmarks."),
    seed: Optional[int] = typer.Option(None, "--seed",
                                       help="Seed for `probability` and jitter draws: same seed, same decisions."),
) -> None:
    """Run as a router in the current network namespace until SIGTERM/SIGINT."""
    import sys

    from wallwatch.censor.nfqueue import CensorService, JsonLog

    stream = open(log, "a", encoding="utf-8") if log else sys.stderr  # noqa: SIM115 - closed below
    try:
        service = CensorService(str(policy), queue_num=queue, status_path=str(status_file) if status_file else None,
                                fail_open=fail_open, log=JsonLog(stream), offload=offload, seed=seed)
        code = service.run()
    finally:
        if log:
            stream.close()
    raise typer.Exit(code)


@censor_app.command("check")
def check_command(policy: Path = typer.Argument(..., help="Policy YAML file.")) -> None:
    """Validate a policy file and print its rules."""
    from wallwatch.censor.policy import PolicyError, load_policy

    try:
        loaded = load_policy(policy)
    except PolicyError as exc:
        typer.echo(f"invalid policy {policy}: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"policy {loaded.name!r}: {len(loaded.rules)} rule(s), sha256 {loaded.sha256}")
    if loaded.description:
        typer.echo(f"  {loaded.description}")
    for index, rule in enumerate(loaded.rules, 1):
        match = ", ".join(f"{m.key} {m.operator} {list(m.values) if len(m.values) > 1 else m.values[0]}"
                          for m in rule.matchers)
        typer.echo(f"{index:3d}. {rule.name}: {match} => {rule.action}{_rule_details(rule)}")


def _rule_details(rule: Any) -> str:
    from wallwatch.censor.policy import static_drops

    extra = ""
    if rule.action == "reset":
        extra = f" x{rule.count}"
    elif rule.action == "dns-inject":
        extra = f" -> {', '.join(rule.answer)} ttl {rule.ttl}"
    elif rule.action == "blockpage":
        extra = f" HTTP {rule.status}, {len(rule.page.encode())}-byte page"
    elif rule.action == "blackhole-ip":
        extra = f" ({len(static_drops(rule))} kernel rule(s))"
    elif rule.throttle is not None:
        throttle = rule.throttle
        if throttle.rate_bps:
            extra += f" rate {throttle.rate_bps} bit/s (htb 1:{throttle.htb_class:x})"
        if throttle.delay_ms:
            extra += f" delay {throttle.delay_ms:g} ms" + (f" +-{throttle.jitter_ms:g} ms" if throttle.jitter_ms else "")
    if rule.probability < 1.0:
        extra += f", probability {rule.probability:g} per flow"
    if rule.residual is not None:
        extra += f", residual {rule.residual.seconds:g} s on the {rule.residual.scope}"
    return extra


@censor_app.command("replay")
def replay_command(
    capture: Path = typer.Argument(..., help="pcap or pcapng file (Ethernet, raw IP, Linux cooked, loopback)."),
    policy: Path = typer.Option(..., "--policy", help="Policy YAML file."),
    as_json: bool = typer.Option(False, "--json", help="JSON lines: one per flow, then a summary line."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Fix the coins of 'probability' rules (default: random)."),
) -> None:
    """Say what the censor would have done to each flow of a capture, offline (nothing is sent)."""
    import json

    from wallwatch.censor.pcap import CaptureError
    from wallwatch.censor.policy import PolicyError, load_policy
    from wallwatch.censor.replay import render_table, replay_capture

    try:
        loaded = load_policy(policy)
        report = replay_capture(capture, loaded, seed=seed)
    except PolicyError as exc:
        typer.echo(f"invalid policy {policy}: {exc}", err=True)
        raise typer.Exit(1) from None
    except (CaptureError, OSError) as exc:
        typer.echo(f"cannot replay {capture}: {exc}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        for flow in report.flows:
            typer.echo(json.dumps(flow.to_json(), default=str))
        typer.echo(json.dumps(report.summary_json(), default=str))
    else:
        import sys

        from rich.console import Console

        # Not a terminal (a file, a pipe): wide enough that rows do not wrap.
        console = Console() if sys.stdout.isatty() else Console(width=220)
        for renderable in render_table(report):
            console.print(renderable)
    if report.problem:
        typer.echo(f"warning: capture damaged {report.problem}", err=True)


def register(app: typer.Typer) -> None:
    app.add_typer(censor_app, name="censor")
