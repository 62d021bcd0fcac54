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
        typer.echo(f"invalid policy: {exc}", err=True)  # the message names the file and line
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


# Flows per printed table in the table view: rows are printed in batches as flows end,
# so the view holds a batch, not the capture (a capture with fewer flows prints one table).
TABLE_BATCH = 1000


@censor_app.command("replay")
def replay_command(
    capture: Path = typer.Argument(..., help="pcap or pcapng file (Ethernet, raw IP, Linux cooked, loopback)."),
    policy: Path = typer.Option(..., "--policy", help="Policy YAML file."),
    as_json: bool = typer.Option(False, "--json", help="JSON lines: one per flow, then a summary line."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Fix the coins of 'probability' rules (default: random)."),
    max_flows: int = typer.Option(65536, "--max-flows", min=1,
                                  help="Flows tracked at once, as live: beyond it the least recently seen ends."),
) -> None:
    """Say what the censor would have done to each flow of a capture, offline (nothing is sent).

    Flows are printed as they end (idle for their timeout, evicted, or at the end of the
    capture), so memory stays bounded by --max-flows however long the capture."""
    import json
    import sys

    from wallwatch.censor.pcap import CaptureError, CaptureReader
    from wallwatch.censor.policy import PolicyError, load_policy
    from wallwatch.censor.replay import FlowVerdict, Replayer, flow_table, summary_lines

    try:
        loaded = load_policy(policy)
    except PolicyError as exc:
        typer.echo(f"invalid policy: {exc}", err=True)  # the message names the file and line
        raise typer.Exit(1) from None
    console: Any = None
    if not as_json:
        from rich.console import Console

        # Not a terminal (a file, a pipe): wide enough that rows do not wrap.
        console = Console() if sys.stdout.isatty() else Console(width=220)
    batch: list[FlowVerdict] = []
    printed = 0

    def print_batch(title: str) -> None:
        nonlocal printed
        batch.sort(key=lambda flow: flow.first_seen)
        console.print(flow_table(title, batch, replayer.first_seen or 0.0))
        printed += len(batch)
        batch.clear()

    def on_flow(flow: FlowVerdict) -> None:
        if as_json:
            sys.stdout.write(json.dumps(flow.to_json(), default=str) + "\n")
            return
        batch.append(flow)
        if len(batch) >= TABLE_BATCH:
            print_batch(f"policy {loaded.name}: flows {printed + 1}-{printed + len(batch)} (in the order they ended)")

    replayer = Replayer(loaded, max_flows, seed, on_flow)
    try:
        reader = CaptureReader(capture)
        for frame in reader:
            replayer.frame(frame)
    except (CaptureError, OSError) as exc:
        typer.echo(f"cannot replay {capture}: {exc}", err=True)
        raise typer.Exit(1) from None
    report = replayer.report(reader.problem)
    if as_json:
        sys.stdout.write(json.dumps(report.summary_json(), default=str) + "\n")
        sys.stdout.flush()
    else:
        total = report.flow_count
        print_batch(f"policy {loaded.name}: {total} flow(s)" if not printed
                    else f"policy {loaded.name}: flows {printed + 1}-{total} of {total}")
        for renderable in summary_lines(report):
            console.print(renderable)
    if report.problem:
        typer.echo(f"warning: capture damaged {report.problem}", err=True)


def register(app: typer.Typer) -> None:
    app.add_typer(censor_app, name="censor")
