"""`wallwatch probe ...`: run nettests, write OONI-format JSONL, show per-feature verdicts.

Heavy imports live inside the commands so `wallwatch --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

NETTESTS = {
    "whatsapp": "WhatsApp per feature: text (chat transport), media, calls (STUN), web, registration",
}

probe_app = typer.Typer(help="Measure messaging services per feature (OONI data format).", no_args_is_help=True)


@probe_app.command("list")
def list_nettests() -> None:
    """List the nettests this probe can run."""
    for name, description in NETTESTS.items():
        typer.echo(f"{name}\t{description}")


@probe_app.command("run")
def run_nettest(
    nettest: str = typer.Argument(..., help="Which nettest (see `wallwatch probe list`)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Append the measurement to this JSONL file."),
    timeout: Optional[float] = typer.Option(None, "--timeout", min=0.1,
                                            help="Bound for each step, in seconds (default: per-step defaults)."),
    probe_cc: str = typer.Option("ZZ", "--probe-cc", help="Country code to record (ZZ = hidden)."),
    probe_asn: str = typer.Option("AS0", "--probe-asn", help="ASN to record (AS0 = hidden)."),
    publish_ip: bool = typer.Option(False, "--publish-ip", help="Record the probe's IP (hidden by default)."),
) -> None:
    """Run NETTEST once; print feature -> verdict, method, evidence."""
    if nettest not in NETTESTS:
        raise typer.BadParameter(f"unknown nettest {nettest!r}; known: {', '.join(NETTESTS)}")
    from rich.console import Console

    from wallwatch.probe.measurement import append_jsonl
    from wallwatch.probe.nettests.whatsapp import default_config, measure_whatsapp
    from wallwatch.probe.settings import ProbeSettings, SettingsError

    console = Console(stderr=True)
    try:
        settings = ProbeSettings.from_environment()
    except SettingsError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    config = default_config(settings, step_timeout=timeout)
    mode = f"lab {settings.lab.run_id}" if settings.lab else "system resolver and CA store"
    with console.status(f"[bold]whatsapp[/bold] ({mode})") as status:
        measurement = measure_whatsapp(config, settings, probe_asn=probe_asn, probe_cc=probe_cc,
                                       publish_ip=publish_ip, progress=lambda m: status.update(f"whatsapp: {m}"))
    if output is not None:
        append_jsonl(output, measurement)
        console.print(f"measurement appended to {output}")
    _print_features(measurement)


def _print_features(measurement: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    features = measurement["test_keys"]["x_wallwatch"]["features"]
    colours = {"ok": "green", "blocked": "red", "down": "yellow", "unknown": "dim"}
    table = Table(title=f"whatsapp {measurement['measurement_start_time']} UTC "
                        f"({measurement['test_runtime']:.1f} s)")
    for column in ("feature", "verdict", "method", "targets", "evidence"):
        table.add_column(column, overflow="fold")
    for name, feature in features.items():
        colour = colours.get(feature["verdict"], "white")
        table.add_row(name, f"[{colour}]{feature['verdict']}[/{colour}]", feature["method"] or "-",
                      f"{feature['targets_ok']}/{feature['targets_total']}",
                      "\n".join(feature["evidence"][:3]))
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(probe_app, name="probe")
