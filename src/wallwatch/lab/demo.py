"""`wallwatch demo`: replay 2017's blocking in China in the lab, phase by phase, every service at once.

The demo is the whole product on one machine: it brings a lab up, puts each
phase's censor policy in force, runs the real probe in the client namespace
(every nettest of the scenario in one probe process, `probe_many_in_lab`),
and compares every service's every feature, verdict and method, with the
phase's ground truth: one table row per service x feature, one column per
phase. Phases are data (`scenarios/whatsapp-2017.yaml`), so a researcher can
write their own:

    name: ...
    probes: [whatsapp, openvpn, telegram, ...]     # default [whatsapp]
    options: {whatsapp: {opening: "2017"}}         # each nettest's --option, checked against it
    phases:
      - id: 2017-07
        label: From 18 July 2017
        policy: {name: ..., rules: [...]}
        expect:                                    # service -> feature -> verdict[/method]
          whatsapp: {text: ok, media: blocked/tls_sni, ...}

(The first format, `expect: {feature: verdict}` for WhatsApp alone, still reads.)
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import typer

# Shared with `wallwatch lab replay` (re-exported: tests and bench import them from here).
from wallwatch.lab.scenario import (
    Expectation, Observed, ScenarioError, Where, check_censor_policy, check_keys, load_document, observed_features,
    optional_text, parse_expectation, parse_options, parse_probes, probe_in_lab, probe_many_in_lab,
)
from wallwatch.vocabulary import NETTEST_FEATURES

__all__ = ["DemoScenario", "Expectation", "Observed", "Phase", "compare", "load_phases", "observed_features",
           "play_phase", "probe_in_lab", "run_demo"]

DEFAULT_SCENARIO = Path(__file__).resolve().parents[3] / "scenarios" / "whatsapp-2017.yaml"
VERDICT_COLOURS = {"ok": "green", "blocked": "red", "throttled": "bright_yellow", "down": "yellow"}


@dataclass(frozen=True, slots=True)
class Phase:
    id: str
    label: str
    description: str
    policy: dict[str, Any]
    expect: Mapping[str, Mapping[str, Expectation]]  # service -> feature -> ground truth


@dataclass(frozen=True, slots=True)
class DemoScenario:
    name: str
    phases: list[Phase]
    probes: tuple[str, ...] = ("whatsapp",)
    options: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


_TOP_KEYS = {"name", "description", "probes", "options", "phases"}
_PHASE_KEYS = {"id", "label", "description", "policy", "expect"}


def load_phases(path: Path) -> DemoScenario:
    """Read a phased scenario; ScenarioError (file:line: key: why) if anything in it is wrong,
    including its censor policies, which the censor checks here rather than mid-demo, and each
    nettest's options, which the nettest's registry entry checks."""
    from wallwatch.probe.nettests import NETTESTS

    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read the phases: {exc.strerror}") from None
    where = load_document(text, str(path))
    document = where.document.data
    if not isinstance(document, dict) or not isinstance(document.get("phases"), list) or not document["phases"]:
        raise where.error(("phases",) if isinstance(document, dict) else (), "a phased scenario needs a non-empty "
                          "`phases` list" + (" (the file is empty)" if where.document.empty else ""))
    check_keys(where, (), document, _TOP_KEYS)
    optional_text(where, ("description",), document.get("description"))
    probes = parse_probes(where, document.get("probes", ["whatsapp"]))
    unknown = [probe for probe in probes if probe not in NETTESTS]
    if unknown:
        raise where.error(("probes",), f"no nettest {unknown[0]!r} (`wallwatch probe list`)")
    options = parse_options(where, document.get("options"), probes)
    phases: list[Phase] = []
    for index, raw in enumerate(document["phases"]):
        at: tuple[str | int, ...] = ("phases", index)
        if not isinstance(raw, dict):
            raise where.error(at, "a phase is a mapping with id, label, description, policy and expect")
        check_keys(where, at, raw, _PHASE_KEYS)
        for key in ("id", "policy", "expect"):
            if key not in raw:
                raise where.error(at, f"missing `{key}`")
        phase_id = raw["id"]
        if not isinstance(phase_id, str) or not phase_id.strip():
            raise where.error((*at, "id"), f"must be a non-empty string, not {phase_id!r}")
        if any(phase.id == phase_id for phase in phases):
            raise where.error((*at, "id"), f"duplicate phase id {phase_id!r}")
        if not isinstance(raw["policy"], dict):
            raise where.error((*at, "policy"), "must be a censor policy (name, rules; docs/censor.md)")
        check_censor_policy(where, (*at, "policy"), raw["policy"])
        phases.append(Phase(
            phase_id,
            optional_text(where, (*at, "label"), raw.get("label")) or phase_id,
            optional_text(where, (*at, "description"), raw.get("description")),
            raw["policy"],
            _expectations(where, (*at, "expect"), raw["expect"], probes),
        ))
    name = document.get("name", path.stem)
    return DemoScenario(name if isinstance(name, str) and name else path.stem, phases, probes, options)


def _expectations(where: Where, at: tuple[str | int, ...], raw: Any, probes: tuple[str, ...]
                  ) -> dict[str, dict[str, Expectation]]:
    """`expect`: service -> feature -> verdict[/method], every feature of every probed service;
    or, for WhatsApp alone, the first format feature -> verdict[/method] (some features may go
    unchecked there, as before: the table shows them as "-")."""
    if not isinstance(raw, dict) or not raw:
        raise where.error(at, "must be a mapping service -> {feature: verdict[/method]}")
    first_format = probes == ("whatsapp",) and all(isinstance(value, str) for value in raw.values())
    by_service = {"whatsapp": raw} if first_format else raw
    stray = [service for service in by_service if service not in probes]
    if stray:
        raise where.error((*at, str(stray[0])), f"{stray[0]!r} is not in `probes` ({', '.join(probes)})")
    expect: dict[str, dict[str, Expectation]] = {}
    for service in probes:
        service_at = at if first_format else (*at, service)
        features = by_service.get(service)
        if not isinstance(features, dict) or not features:
            raise where.error(service_at, f"no ground truth for probed service {service!r}: a mapping "
                              "feature -> verdict[/method]")
        known = tuple(map(str, NETTEST_FEATURES.get(service, ())))
        unknown = [feature for feature in features if known and feature not in known]
        if unknown:
            raise where.error((*service_at, str(unknown[0])),
                              f"{service} has no feature {unknown[0]!r} (features: {', '.join(known)})")
        absent = [feature for feature in known if feature not in features]
        if absent and not first_format:
            raise where.error(service_at, f"no ground truth for feature {absent[0]!r} (every feature of {service} "
                              "needs one)")
        expect[service] = {str(f): parse_expectation(where, (*service_at, str(f)), value)
                           for f, value in features.items()}
    return expect


def compare(phase: Phase, measurement: dict[str, Any]) -> list[dict[str, Any]]:
    """One ground-truth row per feature of the measured service: what the censor did, and what the probe saw."""
    service = str(measurement.get("test_name"))
    observed = observed_features(measurement)
    return [_row(phase, service, feature, expected, observed.get(feature, Observed("missing", None)),
                 measurement.get("report_id"))
            for feature, expected in phase.expect.get(service, {}).items()]


def _row(phase: Phase, service: str, feature: str, expected: Expectation, seen: Observed,
         report_id: str | None, error: str | None = None) -> dict[str, Any]:
    return {
        "phase": phase.id, "service": service, "feature": feature, "policy": phase.policy.get("name"),
        "expected_verdict": expected.verdict, "expected_method": expected.method,
        "observed_verdict": seen.verdict, "observed_method": seen.method,
        "match": error is None and expected.matches(seen), "evidence": list(seen.evidence),
        "measurement_report_id": report_id, "error": error,
    }


def play_phase(lab: Any, scenario: DemoScenario, phase: Phase, probes: tuple[str, ...], scratch: Path,
               timeout: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Put the phase's policy in force, probe every service at once; its measurements and truth rows."""
    lab.set_policy(phase.policy)
    measurements, error = probe_many_in_lab(lab, scratch / f".probe-{phase.id}.jsonl", timeout, probes,
                                            options=scenario.options)
    (scratch / f".probe-{phase.id}.jsonl").unlink(missing_ok=True)
    rows: list[dict[str, Any]] = []
    for service in probes:
        measurement = measurements.get(service)
        if measurement is None:
            rows += [_row(phase, service, f, e, Observed("error", None), None, (error or "no measurement")[:2000])
                     for f, e in phase.expect[service].items()]
            continue
        measurement.setdefault("annotations", {})["wallwatch_phase"] = phase.id
        rows += compare(phase, measurement)
    return [measurements[s] for s in probes if s in measurements], rows


def _render(console: Any, scenario: DemoScenario, probes: tuple[str, ...], truth: list[dict[str, Any]]) -> None:
    """One row per service x feature, one column per phase; a service's name on its first row only."""
    from rich.table import Table

    table = Table(title=f"wallwatch demo: {scenario.name}", show_lines=False)
    table.add_column("service", style="bold")
    table.add_column("feature")
    for phase in scenario.phases:
        table.add_column(f"{phase.id}\n{phase.label}")
    cells = {(row["phase"], row["service"], row["feature"]): row for row in truth}
    for service in probes:
        for index, feature in enumerate(map(str, NETTEST_FEATURES.get(service, ()))):
            values = [_cell(cells.get((phase.id, service, feature))) for phase in scenario.phases]
            table.add_row(service if index == 0 else "", feature, *values)
        table.add_section()
    console.print(table)


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    seen = row["observed_verdict"] + (f" ({row['observed_method']})" if row["observed_method"] else "")
    colour = VERDICT_COLOURS.get(row["observed_verdict"], "magenta")
    if row["match"]:
        return f"[{colour}]{seen}[/]"
    expected = row["expected_verdict"] + (f"/{row['expected_method']}" if row["expected_method"] else "")
    return f"[{colour}]{seen}[/] [bold magenta]expected {expected}[/]"


def run_demo(scenario_path: Path, out_dir: Path, timeout: float) -> bool:
    from rich.console import Console

    from wallwatch.lab.replay import SERVER_FOR_NETTEST, runnable_nettests
    from wallwatch.lab.topology import Lab

    console = Console()
    scenario = load_phases(scenario_path)
    probes, warnings = runnable_nettests(scenario.probes)
    for warning in warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    out_dir.mkdir(parents=True, exist_ok=True)
    measurements_path = out_dir / "measurements.jsonl"
    truth_path = out_dir / "ground_truth.jsonl"
    measurements_path.unlink(missing_ok=True)
    truth: list[dict[str, Any]] = []
    started = time.monotonic()
    servers = sorted({SERVER_FOR_NETTEST[p] for p in probes if p in SERVER_FOR_NETTEST})
    with console.status("bringing the lab up (namespaces, services, censor)...") as status:
        # A state file of its own, so the demo never touches a lab the user has up.
        state_dir = Path(tempfile.mkdtemp(prefix="wallwatch-demo-"))
        with Lab.up(policy=scenario.phases[0].policy, state_path=state_dir / "lab.json", vpn_servers=servers) as lab:
            console.print(f"lab [bold]{lab.run_id}[/] is up")
            for phase in scenario.phases:
                status.update(f"phase {phase.id}: {phase.label} - probing {', '.join(probes)}")
                measurements, rows = play_phase(lab, scenario, phase, probes, out_dir, timeout)
                with measurements_path.open("a") as handle:
                    handle.writelines(json.dumps(m, sort_keys=True) + "\n" for m in measurements)
                truth += rows
                wrong = sum(not r["match"] for r in rows)
                console.print(f"[bold]{phase.id}[/] {phase.label}: {len(rows)} feature verdicts"
                              + (f", [red]{wrong} differ[/]" if wrong else ", all as the ground truth says"))
            status.update("tearing the lab down")
        state_dir.rmdir() if state_dir.exists() and not any(state_dir.iterdir()) else None
    with truth_path.open("w") as handle:
        for row in truth:
            handle.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")
    _render(console, scenario, probes, truth)
    mismatches = [row for row in truth if not row["match"]]
    console.print(
        f"{len(scenario.phases)} phases x {len(probes)} services in {time.monotonic() - started:.1f} s; "
        f"measurements: {measurements_path}; ground truth: {truth_path}"
    )
    if mismatches:
        console.print(f"[bold red]{len(mismatches)} feature verdict(s) differ from the ground truth[/]")
    else:
        console.print("[bold green]every feature verdict and method matches the ground truth[/]")
    return not mismatches


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        scenario: Path = typer.Option(DEFAULT_SCENARIO, help="phased scenario YAML"),
        out: Path = typer.Option(Path("demo-out"), file_okay=False,
                                 help="folder to write measurements.jsonl and ground_truth.jsonl into"),
        timeout: float = typer.Option(2.0, help="per-operation probe timeout, seconds (as `lab replay`'s)"),
    ) -> None:
        """Replay 2017's blocking in China in the lab, every service at once, and show what the probe sees."""
        from wallwatch.lab.capabilities import missing_lab_features

        try:
            load_phases(scenario)  # a mistake in the file is named before any lab is built
        except ScenarioError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(2) from None
        missing = missing_lab_features()
        if missing:
            typer.echo("the lab cannot run here: " + "; ".join(missing), err=True)
            raise typer.Exit(2)
        if not run_demo(scenario, out, timeout):
            raise typer.Exit(1)
