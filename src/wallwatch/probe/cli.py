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
        typer.echo(f"{name}\t{nettest.description}")


@probe_app.command("run")
def run_nettest(
    nettest_choice: Nettest = typer.Argument(..., metavar="NETTEST", show_default=False,
                                             help="Which nettest (see `wallwatch probe list`)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Append the measurement to this JSONL file."),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=0.1,
                                            help="Bound for each step, in seconds (default: per-step defaults)."),
    target: list[str] = typer.Option([], "--target", help="openvpn and web_connectivity, repeatable: "
                                     "openvpn://NAME/?address=IP:PORT&transport=udp|tcp (OONI ts-040 input; "
                                     "default in the lab: the lab's OpenVPN server), or a URL (ts-017 input; "
                                     "default: the shipped list of sites blocked in China by 2017)."),
    input_file: Optional[Path] = typer.Option(None, "--input-file", help="Targets from a file, one a line "
                                              "(# comments), as OONI's --input-file."),
    probe_cc: str = typer.Option("ZZ", "--probe-cc", help="Country code to record (ZZ = hidden)."),
    probe_asn: str = typer.Option("AS0", "--probe-asn", help="ASN to record (AS0 = hidden)."),
    probe_network_name: str = typer.Option("", "--probe-network-name", help="Network (ISP) name to record."),
    measurement_time: Optional[str] = typer.Option(
        None, "--measurement-time", help='Stamp the measurement with this UTC time, "YYYY-MM-DD hh:mm:ss" '
        "(scenario replays); the real time goes to annotations.wallwatch_wall_time."),
    annotation: list[str] = typer.Option([], "--annotation", help="key=value to add to annotations (repeatable)."),
    option: list[str] = typer.Option([], "--option", help="key=value setting of the nettest itself (repeatable), "
                                     "e.g. whatsapp's opening=2017|2022|today (the chat client's era)."),
    publish_ip: bool = typer.Option(False, "--publish-ip", help="Record the probe's IP (hidden by default)."),
) -> None:
    """Run NETTEST once; print feature -> verdict, method, evidence."""
    nettest = nettest_choice.value
    if input_file is not None:
        from wallwatch.probe.nettests.web_connectivity import read_list

        try:
            target = [*target, *read_list(input_file.read_text(encoding="utf-8"))]
        except (OSError, TargetError) as exc:
            raise typer.BadParameter(str(exc), param_hint="--input-file") from None
    if target and NETTESTS[nettest].target_syntax is None:
        takers = [name for name, entry in NETTESTS.items() if entry.target_syntax is not None]
        raise typer.BadParameter(f"--target is for the {' and '.join(takers)} nettest{'s' * (len(takers) > 1)}; "
                                 f"{nettest} has fixed targets")
    from rich.console import Console

    from wallwatch.probe.measurement import Stamp, append_jsonl, parse_annotations, parse_measurement_time
    from wallwatch.probe.settings import ProbeSettings, SettingsError

    console = Console(stderr=True)
    try:
        stamp = Stamp(probe_asn=probe_asn, probe_cc=probe_cc, probe_network_name=probe_network_name,
                      measurement_time=parse_measurement_time(measurement_time) if measurement_time else None,
                      annotations=parse_annotations(annotation), publish_ip=publish_ip)
        options = parse_annotations(option)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    try:
        settings = ProbeSettings.from_environment()
    except SettingsError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    mode = f"lab {settings.lab.run_id}" if settings.lab else "system resolver and CA store"
    with console.status(f"[bold]{nettest}[/bold] ({mode})") as status:
        try:
            measurements = NETTESTS[nettest].run(settings, stamp, step_timeout=timeout, targets=target,
                                                 progress=lambda m: status.update(f"{nettest}: {m}"),
                                                 options=options)
        except TargetError as exc:
            raise typer.BadParameter(str(exc), param_hint="--target") from None
        except ValueError as exc:  # an option the nettest does not take
            raise typer.BadParameter(str(exc), param_hint="--option") from None
    if output is not None:
        for measurement in measurements:
            append_jsonl(output, measurement)
        console.print(f"{len(measurements)} measurement{'s' * (len(measurements) != 1)} appended to {output}")
    if "features" not in measurements[0]["test_keys"].get("x_wallwatch", {}):
        _print_pages(measurements)
        return
    for measurement in measurements:
        _print_features(measurement)


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


def register(app: typer.Typer) -> None:
    app.add_typer(probe_app, name="probe")
