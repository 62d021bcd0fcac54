"""`wallwatch probe ...`: run nettests, write OONI-format JSONL, show per-feature verdicts.

Heavy imports live inside the commands so `wallwatch --help` stays fast.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any, Optional

import typer

from wallwatch.probe.nettests import NETTESTS, TargetError

probe_app = typer.Typer(help="Measure messaging services per feature (OONI data format).", no_args_is_help=True)

# The nettests as a choice, so `--help` lists them and a typo is refused with the list.
Nettest = enum.Enum("Nettest", {name: name for name in NETTESTS}, type=str)  # type: ignore[misc]


@probe_app.command("list")
def list_nettests() -> None:
    """List the nettests this probe can run."""
    for name, nettest in NETTESTS.items():
        takes = "".join(f"\n\t--option {option}" for option in nettest.options)
        typer.echo(f"{name}\t{nettest.description}{takes}")


@probe_app.command("run")
def run_nettest(
    nettest_choices: list[Nettest] = typer.Argument(..., metavar="NETTEST...", show_default=False,
                                                    help="Which nettest(s) (see `wallwatch probe list`); several run "
                                                    "at once in this one process, each writing its own "
                                                    "measurement(s)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Append the measurement(s) to this JSONL file."),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=0.1,
                                            help="Bound for each step, in seconds (default: per-step defaults)."),
    target: list[str] = typer.Option([], "--target", help="openvpn, web_connectivity and keyword, repeatable: "
                                     "openvpn://NAME/?address=IP:PORT&transport=udp|tcp (OONI ts-040 input; "
                                     "default in the lab: the lab's OpenVPN server), a URL (ts-017 input; "
                                     "default: the shipped list of sites blocked in China by 2017), or "
                                     "https://HOST/ of a chat platform (keyword; default in the lab: the lab's "
                                     "platform). With one nettest only."),
    input_file: Optional[Path] = typer.Option(None, "--input-file", help="Targets from a file, one a line "
                                              "(# comments), as OONI's --input-file. With one nettest only."),
    probe_cc: str = typer.Option("ZZ", "--probe-cc", help="Country code to record (ZZ = hidden)."),
    probe_asn: str = typer.Option("AS0", "--probe-asn", help="ASN to record (AS0 = hidden)."),
    probe_network_name: str = typer.Option("", "--probe-network-name", help="Network (ISP) name to record."),
    measurement_time: Optional[str] = typer.Option(
        None, "--measurement-time", help='Stamp the measurement with this UTC time, "YYYY-MM-DD hh:mm:ss" '
        "(scenario replays); the real time goes to annotations.wallwatch_wall_time."),
    annotation: list[str] = typer.Option([], "--annotation", help="key=value to add to annotations (repeatable)."),
    option: list[str] = typer.Option([], "--option", help="key=value setting of the nettest itself (repeatable), "
                                     "e.g. whatsapp's opening=2017|2022|today (the chat client's era), keyword's "
                                     "keywords=A|B (`wallwatch probe list` names each nettest's options); with "
                                     "several nettests, NETTEST.key=value."),
    publish_ip: bool = typer.Option(False, "--publish-ip", help="Record the probe's IP (hidden by default)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print no verdict tables (the JSONL has everything)."),
) -> None:
    """Run NETTEST(s) once; print feature -> verdict, method, evidence (per input for web_connectivity)."""
    nettests = [choice.value for choice in nettest_choices]
    if len(set(nettests)) != len(nettests):
        raise typer.BadParameter("a nettest is named twice")
    if input_file is not None:
        from wallwatch.probe.nettests.web_connectivity import read_list

        try:
            target = [*target, *read_list(input_file.read_text(encoding="utf-8"))]
        except (OSError, TargetError) as exc:
            raise typer.BadParameter(str(exc), param_hint="--input-file") from None
    if target and (len(nettests) > 1 or NETTESTS[nettests[0]].target_syntax is None):
        takers = [name for name, entry in NETTESTS.items() if entry.target_syntax is not None]
        why = f"{nettests[0]} has fixed targets" if len(nettests) == 1 else "it takes one nettest at a time"
        names = f"{', '.join(takers[:-1])} and {takers[-1]}" if len(takers) > 1 else takers[0]
        raise typer.BadParameter(f"--target is for the {names} nettest{'s' * (len(takers) > 1)}; {why}")
    from rich.console import Console

    from wallwatch.probe.measurement import Stamp, append_jsonl, parse_annotations, parse_measurement_time
    from wallwatch.probe.settings import ProbeSettings, SettingsError

    console = Console(stderr=True)
    try:
        stamp = Stamp(probe_asn=probe_asn, probe_cc=probe_cc, probe_network_name=probe_network_name,
                      measurement_time=parse_measurement_time(measurement_time) if measurement_time else None,
                      annotations=parse_annotations(annotation), publish_ip=publish_ip)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    try:
        options = scoped_options(nettests, parse_annotations(option))
        for nettest in nettests:
            NETTESTS[nettest].check_options(options[nettest])
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--option") from None
    try:
        settings = ProbeSettings.from_environment()
    except SettingsError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    mode = f"lab {settings.lab.run_id}" if settings.lab else "system resolver and CA store"
    if len(nettests) == 1:
        nettest = nettests[0]
        with console.status(f"[bold]{nettest}[/bold] ({mode})") as status:
            try:
                measurements = NETTESTS[nettest].run(settings, stamp, step_timeout=timeout, targets=target,
                                                     progress=lambda m: status.update(f"{nettest}: {m}"),
                                                     options=options[nettest])
            except TargetError as exc:
                raise typer.BadParameter(str(exc), param_hint="--target") from None
            except ValueError as exc:  # an option value the nettest refuses
                raise typer.BadParameter(str(exc), param_hint="--option") from None
        failed: dict[str, str] = {}
        if output is not None:
            for measurement in measurements:
                append_jsonl(output, measurement)
    else:
        with console.status(f"[bold]{', '.join(nettests)}[/bold] ({mode})"):
            measurements, failed = _run_together(nettests, settings, stamp, timeout, options, output)
    if output is not None and measurements:
        console.print(f"{len(measurements)} measurement{'s' * (len(measurements) != 1)} appended to {output}")
    if not quiet:
        _print_measurements(measurements)
    for nettest, error in failed.items():
        console.print(f"[red]error:[/red] {nettest}: {error}")
    if failed:
        raise typer.Exit(1)


def _print_measurements(measurements: list[dict[str, Any]]) -> None:
    """A verdict table per measurement with wallwatch's features; one table of OONI's keys for the
    pages of a nettest that writes one measurement per input (web_connectivity)."""
    pages = [m for m in measurements if "features" not in m["test_keys"].get("x_wallwatch", {})]
    for measurement in measurements:
        if "features" in measurement["test_keys"].get("x_wallwatch", {}):
            _print_features(measurement)
    if pages:
        _print_pages(pages)


def _print_pages(measurements: list[dict[str, Any]]) -> None:
    """OONI's own conclusions per input (web_connectivity); wallwatch's verdicts come from the pipeline."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{measurements[0]['test_name']}: {len(measurements)} input(s) (OONI's keys; "
                        "`wallwatch ingest` judges them)")
    for column in ("input", "blocking", "accessible", "dns", "failure", "control"):
        table.add_column(column, overflow="fold")
    for measurement in measurements:
        keys = measurement["test_keys"]
        blocking = keys.get("blocking")
        colour = "green" if blocking is False else "red" if blocking else "dim"
        table.add_row(str(measurement.get("input")), f"[{colour}]{blocking}[/{colour}]", str(keys.get("accessible")),
                      str(keys.get("dns_consistency")), keys.get("http_experiment_failure") or "-",
                      keys.get("control_failure") or "ok")
    Console().print(table)


def scoped_options(nettests: list[str], options: dict[str, str]) -> dict[str, dict[str, str]]:
    """`--option` values per nettest: `NETTEST.key=value`, or `key=value` when one nettest runs."""
    scoped: dict[str, dict[str, str]] = {nettest: {} for nettest in nettests}
    for key, value in options.items():
        name, dot, rest = key.partition(".")
        if dot and name in NETTESTS:
            if name not in scoped:
                raise ValueError(f"--option {key}: {name} is not being run")
            scoped[name][rest] = value
        elif len(nettests) == 1:
            scoped[nettests[0]][key] = value
        else:
            raise ValueError(f"--option {key}: with several nettests, name the one it is for (NETTEST.{key}=...)")
    return scoped


def _run_together(nettests: list[str], settings: Any, stamp: Any, timeout: float | None,
                  options: dict[str, dict[str, str]], output: Path | None) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Every nettest at once, one thread (and event loop) each: what a day of a replay costs is then
    the slowest nettest, not their sum, and one interpreter start, not one per nettest. Each
    nettest's measurements are appended as soon as they are whole (`Nettest.run`: one per input for
    web_connectivity, one for the others); a nettest that fails is reported, not fatal."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from wallwatch.probe.measurement import append_jsonl

    measurements: dict[str, list[dict[str, Any]]] = {}
    failed: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=len(nettests), thread_name_prefix="nettest") as pool:
        futures = {pool.submit(NETTESTS[n].run, settings, stamp, step_timeout=timeout, options=options[n]): n
                   for n in nettests}
        for future in as_completed(futures):
            nettest = futures[future]
            try:
                results = future.result()
            except Exception as exc:  # one nettest's crash is its own finding, not the others' loss
                failed[nettest] = f"{exc.__class__.__name__}: {exc}"
                continue
            if output is not None:
                for measurement in results:
                    append_jsonl(output, measurement)
            measurements[nettest] = results
    return [m for n in nettests for m in measurements.get(n, [])], failed


def _print_features(measurement: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    x = measurement["test_keys"]["x_wallwatch"]
    colours = {"ok": "green", "blocked": "red", "throttled": "bright_yellow", "down": "yellow", "unknown": "dim"}
    simulated = measurement.get("annotations", {}).get("wallwatch_wall_time")
    when = f"{measurement['measurement_start_time']} UTC" + (" (simulated)" if simulated else "")
    table = Table(title=f"{measurement['test_name']} {when} ({measurement['test_runtime']:.1f} s)")
    for column in ("feature", "verdict", "method", "targets", "evidence"):
        table.add_column(column, overflow="fold")
    for name, feature in x["features"].items():
        colour = colours.get(feature["verdict"], "white")
        verdict = f"[{colour}]{feature['verdict']}[/{colour}]"
        if feature.get("partial"):
            verdict += f" (partial, {feature.get('blocked_share', 0):.0%} interfered)"
        table.add_row(name, verdict, feature["method"] or "-", f"{feature['targets_ok']}/{feature['targets_total']}",
                      "\n".join(feature["evidence"][:3]))
    console = Console()
    console.print(table)
    handshakes = x.get("openvpn_handshakes")
    if handshakes:
        console.print(_handshake_table(handshakes))
    if x.get("summary"):
        network = measurement.get("probe_asn", "")
        console.print(f"from {network} on {measurement['measurement_start_time'][:10]}: {x['summary']}")


def _handshake_table(handshakes: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(title="OpenVPN handshakes")
    for column in ("target", "transport", "stage reached", "failed at", "failure", "server TLS"):
        table.add_column(column, overflow="fold")
    for h in handshakes:
        table.add_row(f"{h['provider']} {h['address']}", h["transport"], h["stage_reached"] or "-",
                      h["failed_at"] or "-", h["failure"] or "-", h["server_tls"] or "-")
    return table


def monitor_command(
    nettests: list[str] = typer.Argument(None, help="Nettests to run each round (default: whatsapp)."),
    collector: str = typer.Option(..., "--collector", help="The collector's URL (`wallwatch serve`), e.g. "
                                  "http://127.0.0.1:8470"),
    every: str = typer.Option("15m", "--every", help="Period between rounds: 15m, 1h, 90s, ..."),
    jitter: float = typer.Option(0.1, "--jitter", min=0.0, max=0.49,
                                 help="Random offset of each round, as a fraction of the period."),
    spool: Path = typer.Option(Path("wallwatch-spool"), "--spool",
                               help="Folder holding measurements until the collector has them."),
    token_file: Optional[Path] = typer.Option(None, "--token-file", exists=True, dir_okay=False,
                                              help="File holding the bearer token the collector wants."),
    rounds: Optional[int] = typer.Option(None, "--rounds", min=1, help="Stop after this many rounds "
                                         "(default: until SIGTERM)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=0.1, help="Bound for each probe step, seconds."),
    target: list[str] = typer.Option([], "--target", help="Targets of nettests that take them (openvpn)."),
    probe_cc: str = typer.Option("ZZ", "--probe-cc", help="Country code to record (ZZ = hidden)."),
    probe_asn: str = typer.Option("AS0", "--probe-asn", help="ASN to record (AS0 = hidden)."),
    probe_network_name: str = typer.Option("", "--probe-network-name", help="Network (ISP) name to record."),
    annotation: list[str] = typer.Option([], "--annotation", help="key=value to add to annotations (repeatable)."),
) -> None:
    """Run nettests on a schedule and submit each measurement to a collector, spooling while it is away."""
    import logging
    import signal

    from wallwatch.probe.measurement import Stamp, parse_annotations
    from wallwatch.probe.monitor import Monitor, parse_duration
    from wallwatch.probe.settings import ProbeSettings, SettingsError
    from wallwatch.probe.submit import CollectorClient, Spool

    names = list(nettests or ["whatsapp"])
    unknown = [name for name in names if name not in NETTESTS]
    if unknown:
        raise typer.BadParameter(f"unknown nettest(s) {', '.join(unknown)}; known: {', '.join(NETTESTS)}")
    try:
        period = parse_duration(every)
        stamp = Stamp(probe_asn=probe_asn, probe_cc=probe_cc, probe_network_name=probe_network_name,
                      annotations=parse_annotations(annotation))
        client = CollectorClient(collector, token=token_file.read_text().strip() if token_file else None)
        settings = ProbeSettings.from_environment()
    except (ValueError, SettingsError) as exc:
        raise typer.BadParameter(str(exc)) from None

    def measure(name: str) -> dict:  # type: ignore[type-arg]
        takes_targets = NETTESTS[name].target_syntax is not None
        return NETTESTS[name].run_once(settings, stamp, step_timeout=timeout, targets=target if takes_targets else ())

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        queue = Spool(spool)
    except RuntimeError as exc:
        raise typer.BadParameter(str(exc), param_hint="--spool") from None

    def on_round(number: int, stats) -> None:  # type: ignore[no-untyped-def]
        typer.echo(f"round {number + 1}: {stats.measured} measured, {stats.sent} submitted, "
                   f"{queue.count()} in the spool" + (f", {stats.rejected} refused" if stats.rejected else ""),
                   err=True)

    monitor = Monitor(names, measure, client, queue, every=period, jitter=jitter, rounds=rounds, on_round=on_round)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: monitor.stop.set())
    try:
        stats = monitor.run()
    finally:
        queue.close()
    typer.echo(f"stopped after {stats.rounds} round(s): {stats.measured} measured, {stats.sent} submitted, "
               f"{queue.count()} left in {spool}", err=True)


def register(app: typer.Typer) -> None:
    app.add_typer(probe_app, name="probe")
    app.command("monitor")(monitor_command)
