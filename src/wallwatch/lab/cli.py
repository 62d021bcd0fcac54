"""`wallwatch lab ...`: bring the lab up and down, look at it, run things in it."""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path
from typing import Optional

import typer

lab_app = typer.Typer(
    help="The lab: network namespaces with emulated services behind an emulated censor.",
    no_args_is_help=True,
)


def _console():  # rich is imported on use, so `wallwatch --help` stays fast
    from rich.console import Console

    return Console()


def _fail(message: str) -> typer.Exit:
    _console().print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(1)


@lab_app.command("up")
def up(
    policy: Optional[Path] = typer.Option(None, "--policy", exists=True, dir_okay=False, help="censor policy YAML (default: allow everything)"),
    no_censor: bool = typer.Option(False, "--no-censor", help="plain forwarding: no censor process"),
    scenario: Optional[Path] = typer.Option(
        None, "--isps-from", exists=True, dir_okay=False,
        help="a scenario YAML: one client and censor namespace per ISP it names (docs/scenarios.md)",
    ),
    openvpn: bool = typer.Option(False, "--openvpn", help="also start the lab's OpenVPN server (for `probe run openvpn`)"),
    circumvention: bool = typer.Option(False, "--circumvention", help="also start every circumvention server "
                                       "(OpenVPN, WireGuard, Shadowsocks, obfs4, a Tor bridge) for "
                                       "`probe run circumvention`"),
) -> None:
    """Build the lab and leave it running; prints its run id, namespaces and addresses."""
    from rich.table import Table

    from wallwatch.lab import addresses
    from wallwatch.lab.topology import Lab, LabError

    console = _console()
    isps = None
    if scenario is not None:
        from wallwatch.lab.scenario import ScenarioError, load_scenario

        try:
            isps = load_scenario(scenario).isps
        except ScenarioError as exc:
            raise _fail(str(exc)) from None
    from wallwatch.lab.topology import CIRCUMVENTION_SERVERS

    servers = list(CIRCUMVENTION_SERVERS) if circumvention else ["openvpn"] if openvpn else []
    try:
        with console.status("bringing the lab up (namespaces, services, censor)..."):
            lab = Lab.up(policy=policy, censor=not no_censor, isps=isps, vpn_servers=servers)
    except (LabError, OSError, ValueError) as exc:
        raise _fail(str(exc)) from None
    console.print(f"lab [bold]{lab.run_id}[/bold] is up; state in {lab.state_path}")
    table = Table("role", "ISP", "namespace", "addresses", title="namespaces")
    for site in lab.sites:
        isp = "" if not lab.multi_isp else f"{site.isp.id} ({site.isp.asn})"
        table.add_row("client", isp, site.client_ns, site.addresses.client)
        table.add_row("censor", isp, site.censor_ns, f"{site.addresses.censor_client_side}, {site.addresses.censor_services_side}")
    table.add_row("services", "", lab.namespaces["services"], ", ".join(site.addresses.services_side for site in lab.sites))
    console.print(table)
    services = Table("service", "name", "address", "ports", title="lab internet")
    services.add_row("resolver", "", addresses.RESOLVER, "53 udp/tcp")
    for name, address in addresses.CHAT_SERVERS.items():
        services.add_row("chat", name, address, ", ".join(map(str, addresses.CHAT_PORTS)))
    for name, address in addresses.HTTPS_SERVICES.items():
        services.add_row("https", name, address, str(addresses.HTTPS_PORT))
    for relay in addresses.CALL_RELAYS:
        services.add_row("call relay (STUN)", "", relay, f"{addresses.STUN_PORT} udp")
    for kind, entry in lab.state()["vpn_servers"].items():
        services.add_row(kind, "", entry["address"], f"{entry['port']} {'/'.join(entry['transports'])}")
    services.add_row("sink (forged answers)", "", addresses.SINK, "nothing answers")
    console.print(services)
    censor = f"policy {lab.policy_path}" if lab.censor_enabled else "none (plain forwarding)"
    if lab.multi_isp and lab.censor_enabled:
        censor = "one per ISP; swap one with `wallwatch lab policy FILE --isp ID`"
    console.print(f"censor: {censor}\nrun things in the client: [bold]wallwatch lab exec [--isp ID] -- CMD[/bold]")


@lab_app.command("down")
def down(all_labs: bool = typer.Option(False, "--all", help="remove every ww*-client/censor/svc namespace, leftovers included")) -> None:
    """Tear the lab down (idempotent: nothing to do is not an error)."""
    from wallwatch.lab.topology import Lab, LabError, cleanup_all

    console = _console()
    if all_labs:
        removed = cleanup_all()
        console.print(f"removed labs: {', '.join(removed)}" if removed else "no lab namespaces found")
        return
    try:
        lab = Lab.from_state()
    except LabError:
        console.print("no lab is up")
        return
    lab.down()
    console.print(f"lab {lab.run_id} is down")


@lab_app.command("status")
def status() -> None:
    """Namespaces and processes alive, and the censor's policy and counters."""
    from rich.table import Table

    from wallwatch.lab.topology import Lab, LabError

    console = _console()
    try:
        lab = Lab.from_state()
    except LabError as exc:
        raise _fail(str(exc)) from None
    table = Table("part", "alive", title=f"lab {lab.run_id}")
    alive = lab.alive()
    for part, ok in alive.items():
        table.add_row(part, "[green]yes[/green]" if ok else "[red]no[/red]")
    console.print(table)
    for site in lab.sites:
        censor_status = lab.censor_status(site.isp.id)
        if lab.multi_isp:
            console.print(f"[bold]ISP {site.isp.id}[/bold] ({site.isp.name}, {site.isp.asn}): censor in {site.censor_ns}")
        if censor_status is not None:
            console.print_json(data=censor_status)
        elif lab.censor_enabled:
            console.print("censor: no status file yet")
    if not all(alive.values()):
        raise typer.Exit(1)


@lab_app.command(
    "exec",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def exec_(
    command: list[str] = typer.Argument(..., help="the command, after --"),
    isp: Optional[str] = typer.Option(None, "--isp", help="which ISP's client namespace (default: the first)"),
) -> None:
    """Run CMD in the client namespace with WALLWATCH_LAB set; exits with CMD's code."""
    from wallwatch.lab.topology import Lab, LabError

    try:
        lab = Lab.from_state()
    except LabError as exc:
        raise _fail(str(exc)) from None
    # No timeout and no capture: this is the user's command, on the user's terminal.
    try:
        lab.site(isp)
    except LabError as exc:
        raise _fail(str(exc)) from None
    result = lab.run_in_client(command, timeout=None, capture_output=False, isp=isp,  # type: ignore[arg-type]
                               env={"PATH": scripts_first_path(os.environ.get("PATH", ""))})
    raise typer.Exit(result.returncode)


def scripts_first_path(path: str) -> str:
    """PATH with the running interpreter's console-script folder first.

    `wallwatch lab exec -- wallwatch probe run whatsapp` (the README's example) is typed as
    `.venv/bin/wallwatch ...`, whose folder is usually not on PATH; inside the namespace the
    inner `wallwatch` must still be found, and be this environment's, not another install's.
    """
    scripts = sysconfig.get_path("scripts")
    rest = [entry for entry in path.split(os.pathsep) if entry and entry != scripts]
    return os.pathsep.join([scripts, *rest])


@lab_app.command("policy")
def policy(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="policy YAML"),
    isp: Optional[str] = typer.Option(None, "--isp", help="only this ISP's censor (default: every ISP's)"),
) -> None:
    """Swap the running censor's policy; returns once the censor reports it loaded."""
    from wallwatch.lab.topology import Lab, LabError

    try:
        loaded = Lab.from_state().set_policy(file, isp=isp)
    except LabError as exc:
        raise _fail(str(exc)) from None
    _console().print(
        f"censor loaded policy [bold]{loaded.get('policy_name')}[/bold] "
        f"({loaded.get('rules')} rules, sha256 {str(loaded.get('policy_sha256'))[:12]})"
    )


@lab_app.command("replay")
def replay(
    scenario: Path = typer.Argument(..., exists=True, dir_okay=False, help="scenario YAML (docs/scenarios.md)"),
    out: Path = typer.Option(Path("replay-out"), "--out", file_okay=False,
                             help="folder to write measurements.jsonl and ground_truth.jsonl into"),
    days_per_phase: Optional[int] = typer.Option(
        None, "--days-per-phase", min=1, help="probe only the first N days of every phase (change days always): for CI"
    ),
    from_: Optional[str] = typer.Option(None, "--from", help="first simulated day, YYYY-MM-DD (default: the scenario's start)"),
    to: Optional[str] = typer.Option(None, "--to", help="last simulated day, YYYY-MM-DD (default: the scenario's end)"),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=0.1,
                                            help="per-step probe timeout, seconds (default: 2, lab/replay.py)"),
    live: bool = typer.Option(False, "--live", help="also submit each day's measurements to a running "
                              "`wallwatch serve` (--collector) as the day ends"),
    collector: Optional[str] = typer.Option(None, "--collector", help="the collector's URL, for --live"),
    day_seconds: float = typer.Option(0.0, "--day-seconds", min=0.0, help="with --live: each simulated day "
                                      "lasts at least this many seconds"),
    token_file: Optional[Path] = typer.Option(None, "--token-file", exists=True, dir_okay=False,
                                              help="with --live: file holding the collector's bearer token"),
) -> None:
    """Replay a scenario's timeline over simulated days in a multi-ISP lab; compare with its ground truth."""
    from wallwatch.lab.capabilities import missing_lab_features
    from wallwatch.lab.replay import DEFAULT_TIMEOUT, LiveTarget, render_summary, replay as run_replay
    from wallwatch.lab.scenario import ScenarioError, load_scenario, parse_day
    from wallwatch.lab.topology import LabError

    console = _console()
    try:
        loaded = load_scenario(scenario)
        start = parse_day(from_) if from_ else None
        end = parse_day(to) if to else None
        loaded.sample_days(days_per_phase, start, end)  # a bad range fails before any lab is built
    except (ScenarioError, ValueError) as exc:
        raise _fail(str(exc)) from None
    target = None
    if live or collector:
        if not (live and collector):
            raise _fail("--live and --collector go together: the collector is where the live replay submits")
        if not collector.startswith(("http://", "https://")):
            raise _fail(f"--collector must be an http:// or https:// URL, got {collector!r}")
        target = LiveTarget(collector, day_seconds, token_file.read_text().strip() if token_file else None)
    missing = missing_lab_features()
    if missing:
        console.print("[red]the lab cannot run here:[/red] " + "; ".join(missing), highlight=False)
        raise typer.Exit(2)

    from wallwatch.progress import progress

    days = loaded.sample_days(days_per_phase, start, end)
    try:
        with progress("replay: simulated days", len(days), console=console) as step:

            def on_day(day, rows, seconds):  # type: ignore[no-untyped-def]
                bad = sum(not row.match for row in rows)
                verdict = "[green]all match[/]" if not bad else f"[red]{bad} differ[/]"
                console.print(f"{day} {day.strftime('%a')}: {len(rows)} feature verdicts, {verdict} "
                              f"({seconds:.1f} s)", highlight=False)
                step(description=f"replay: {day} done")

            report = run_replay(
                loaded, out, days_per_phase=days_per_phase, start=start, end=end,
                timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
                on_day=on_day, on_status=lambda message: step(0, description=f"replay: {message}"), live=target,
            )
    except (LabError, RuntimeError, OSError) as exc:
        raise _fail(str(exc)) from None
    render_summary(console, report)
    if report.mismatches:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(lab_app, name="lab")
