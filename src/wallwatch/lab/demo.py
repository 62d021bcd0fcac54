"""`wallwatch demo`: replay WhatsApp's 2017 blocking in the lab, phase by phase.

The demo is the whole product on one machine: it brings a lab up, puts each
phase's censor policy in force, runs the real probe in the client namespace,
and compares every feature's verdict and method with the phase's ground truth.
Phases are data (`scenarios/whatsapp-2017.yaml`), so a researcher can write
their own.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

# Shared with `wallwatch lab replay` (re-exported: tests and bench import them from here).
from wallwatch.lab.scenario import (
    Expectation, Observed, ScenarioError, check_censor_policy, check_keys, load_document, observed_features,
    optional_text, parse_expectation, probe_in_lab,
)
from wallwatch.vocabulary import NETTEST_FEATURES

__all__ = ["Expectation", "Observed", "Phase", "compare", "load_phases", "observed_features", "probe_in_lab", "run_demo"]

FEATURES: tuple[str, ...] = tuple(map(str, NETTEST_FEATURES["whatsapp"]))
DEFAULT_SCENARIO = Path(__file__).resolve().parents[3] / "scenarios" / "whatsapp-2017.yaml"


@dataclass(frozen=True, slots=True)
class Phase:
    id: str
    label: str
    description: str
    policy: dict[str, Any]
    expect: dict[str, Expectation]


_TOP_KEYS = {"name", "description", "phases"}
_PHASE_KEYS = {"id", "label", "description", "policy", "expect"}


def load_phases(path: Path) -> tuple[str, list[Phase]]:
    """Read a phased scenario; ScenarioError (file:line: key: why) if anything in it is wrong,
    including its censor policies, which the censor checks here rather than mid-demo."""
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
        expect = raw["expect"]
        if not isinstance(expect, dict) or not expect:
            raise where.error((*at, "expect"), "must be a mapping feature -> verdict[/method]")
        unknown = [feature for feature in expect if feature not in FEATURES]
        if unknown:
            raise where.error((*at, "expect", str(unknown[0])),
                              f"whatsapp has no feature {unknown[0]!r} (features: {', '.join(FEATURES)})")
        phases.append(Phase(
            phase_id,
            optional_text(where, (*at, "label"), raw.get("label")) or phase_id,
            optional_text(where, (*at, "description"), raw.get("description")),
            raw["policy"],
            {str(f): parse_expectation(where, (*at, "expect", str(f)), value) for f, value in expect.items()},
        ))
    name = document.get("name", path.stem)
    return (name if isinstance(name, str) and name else path.stem), phases


def compare(phase: Phase, measurement: dict[str, Any]) -> list[dict[str, Any]]:
    """One ground-truth row per feature: what the censor did, and what the probe saw."""
    observed = observed_features(measurement)
    rows = []
    for feature, expected in phase.expect.items():
        seen = observed.get(feature, Observed("missing", None))
        rows.append(
            {
                "phase": phase.id,
                "feature": feature,
                "policy": phase.policy.get("name"),
                "expected_verdict": expected.verdict,
                "expected_method": expected.method,
                "observed_verdict": seen.verdict,
                "observed_method": seen.method,
                "match": expected.matches(seen),
                "evidence": list(seen.evidence),
                "measurement_report_id": measurement.get("report_id"),
            }
        )
    return rows


def _render(console: Any, scenario_name: str, phases: list[Phase], truth: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title=f"wallwatch demo: {scenario_name}", show_lines=True)
    table.add_column("feature", style="bold")
    for phase in phases:
        table.add_column(f"{phase.id}\n{phase.label}")
    cells = {(row["phase"], row["feature"]): row for row in truth}
    for feature in FEATURES:
        values = []
        for phase in phases:
            row = cells.get((phase.id, feature))
            if row is None:
                values.append("-")
                continue
            seen = row["observed_verdict"] + (f" ({row['observed_method']})" if row["observed_method"] else "")
            colour = {"ok": "green", "blocked": "red", "throttled": "bright_yellow", "down": "yellow"}.get(
                row["observed_verdict"], "magenta")
            mark = "" if row["match"] else f"\n[bold magenta]expected {row['expected_verdict']}" + (
                f"/{row['expected_method']}" if row["expected_method"] else ""
            ) + "[/]"
            values.append(f"[{colour}]{seen}[/]{mark}")
        table.add_row(feature, *values)
    console.print(table)


def run_demo(scenario: Path, out_dir: Path, timeout: float) -> bool:
    from rich.console import Console

    from wallwatch.lab.topology import Lab

    console = Console()
    scenario_name, phases = load_phases(scenario)
    out_dir.mkdir(parents=True, exist_ok=True)
    measurements_path = out_dir / "measurements.jsonl"
    truth_path = out_dir / "ground_truth.jsonl"
    measurements_path.unlink(missing_ok=True)
    truth: list[dict[str, Any]] = []
    started = time.monotonic()
    with console.status("bringing the lab up (namespaces, services, censor)...") as status:
        # A state file of its own, so the demo never touches a lab the user has up.
        state_dir = Path(tempfile.mkdtemp(prefix="wallwatch-demo-"))
        with Lab.up(policy=phases[0].policy, state_path=state_dir / "lab.json") as lab:
            console.print(f"lab [bold]{lab.run_id}[/] is up")
            for phase in phases:
                status.update(f"phase {phase.id}: {phase.label} - putting the policy in force")
                lab.set_policy(phase.policy)
                status.update(f"phase {phase.id}: {phase.label} - probing WhatsApp")
                measurement = probe_in_lab(lab, out_dir / f".probe-{phase.id}.jsonl", timeout)
                measurement.setdefault("annotations", {})["wallwatch_phase"] = phase.id
                with measurements_path.open("a") as handle:
                    handle.write(json.dumps(measurement, sort_keys=True) + "\n")
                (out_dir / f".probe-{phase.id}.jsonl").unlink(missing_ok=True)
                rows = compare(phase, measurement)
                truth += rows
                verdicts = ", ".join(f"{r['feature']}={r['observed_verdict']}" for r in rows)
                console.print(f"[bold]{phase.id}[/] {phase.label}: {verdicts}")
            status.update("tearing the lab down")
        state_dir.rmdir() if state_dir.exists() and not any(state_dir.iterdir()) else None
    with truth_path.open("w") as handle:
        for row in truth:
            handle.write(json.dumps(row, sort_keys=True) + "\n")
    _render(console, scenario_name, phases, truth)
    mismatches = [row for row in truth if not row["match"]]
    console.print(
        f"{len(phases)} phases in {time.monotonic() - started:.1f} s; measurements: {measurements_path}; "
        f"ground truth: {truth_path}"
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
        timeout: float = typer.Option(4.0, help="per-operation probe timeout, seconds"),
    ) -> None:
        """Replay WhatsApp's 2017 blocking in China in the lab and show what the probe sees."""
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
