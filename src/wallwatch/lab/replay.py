"""`wallwatch lab replay SCENARIO`: a scenario's timeline, day by day, in one multi-ISP lab.

For each simulated day, each ISP's censor gets the policy the scenario puts
in force that day (only where it changed, all ISPs at once), then every
nettest of the scenario runs from every ISP's client namespace in parallel.
Each measurement is stamped with the simulated day (`--measurement-time`:
`measurement_start_time`/`test_start_time`; the probe keeps the real time in
`annotations.wallwatch_wall_time`) and the ISP's `probe_asn`, `probe_cc` and
`probe_network_name`, and compared feature by feature with the policy's
ground truth. Output, appended day by day so an interrupted replay keeps
what it did:

    OUT/measurements.jsonl   one OONI-format measurement per day x ISP x nettest
    OUT/ground_truth.jsonl   one row per day x ISP x service x feature: policy, expected, observed, match

Live (`--live --collector URL --day-seconds N`): each day's measurements are also submitted to a
running `wallwatch serve` as soon as they are made, through the monitors' spool and client
(`probe/submit.py`), and each simulated day lasts at least N seconds, so the timeline unfolds on the
observatory as fast simulated days and its alerts fire on the days the ground truth says. What was
submitted when is logged, for checking alerts against the simulated calendar:

    OUT/live.jsonl           one row per day: the day, when it started and when it was submitted
                             (Unix time), the uids the collector acknowledged
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from wallwatch.lab.scenario import Expectation, Observed, Scenario, ScenarioPolicy, observed_features, probe_many_in_lab
from wallwatch.lab.topology import Isp, Lab

# Per probe step, seconds. A blocked attempt waits out its step (a black-holed connect, a silent relay),
# so a day costs about two of these; in the lab a round trip is ~0.1 ms, so 2 s only guards against a
# probe starved of CPU on a busy machine: no verdict depends on its length beyond that.
DEFAULT_TIMEOUT = 2.0
# Nettests that need a real server in the lab, and which (Lab.up(vpn_servers=...)).
SERVER_FOR_NETTEST: Mapping[str, str] = {"openvpn": "openvpn"}
FEATURE_LETTERS: Mapping[str, str] = {
    "text": "T", "media": "M", "calls": "C", "web": "W", "registration": "R", "tunnel": "V",
}
VERDICT_COLOURS: Mapping[str, str] = {"ok": "green", "blocked": "red", "throttled": "bright_yellow", "down": "yellow"}


@dataclass(frozen=True, slots=True)
class TruthRow:
    """One day x ISP x service x feature: the policy in force, what it implies, what the probe saw."""

    scenario: str
    date: str
    isp: str
    probe_asn: str
    probe_cc: str
    policy: str
    service: str
    feature: str
    expected: Expectation
    observed: Observed
    measurement_report_id: str | None
    error: str | None = None

    @property
    def match(self) -> bool:
        return self.error is None and self.expected.matches(self.observed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "date": self.date,
            "isp": self.isp,
            "probe_asn": self.probe_asn,
            "probe_cc": self.probe_cc,
            "policy": self.policy,
            "service": self.service,
            "feature": self.feature,
            "expected_verdict": self.expected.verdict,
            "expected_method": self.expected.method,
            "observed_verdict": self.observed.verdict,
            "observed_method": self.observed.method,
            "match": self.match,
            "partial": self.observed.partial,
            "blocked_share": self.observed.blocked_share,
            "evidence": list(self.observed.evidence),
            "measurement_report_id": self.measurement_report_id,
            "error": self.error,
        }


@dataclass(frozen=True)
class LiveTarget:
    """Where a live replay submits, and how long a simulated day lasts at least (seconds)."""

    collector: str
    day_seconds: float = 0.0
    token: str | None = None


@dataclass
class ReplayReport:
    scenario: Scenario
    days: list[dt.date]
    probes: tuple[str, ...]
    rows: list[TruthRow] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds_per_day: list[float] = field(default_factory=list)
    setup_seconds: float = 0.0
    measurements_path: Path | None = None
    truth_path: Path | None = None
    live_path: Path | None = None
    submitted: int = 0
    unsent: int = 0

    @property
    def mismatches(self) -> list[TruthRow]:
        return [row for row in self.rows if not row.match]


def runnable_probes(scenario: Scenario) -> tuple[tuple[str, ...], list[str]]:
    """The scenario's nettests this installation can run, and a warning for each it cannot."""
    return runnable_nettests(scenario.probes)


def runnable_nettests(nettests: Sequence[str]) -> tuple[tuple[str, ...], list[str]]:
    """Of `nettests`, those this installation can run (installed, with their lab server), and a warning for each other."""
    from wallwatch.probe.nettests import NETTESTS

    runnable, warnings = [], []
    for nettest in nettests:
        if nettest not in NETTESTS:
            warnings.append(f"nettest {nettest!r} is not installed (`wallwatch probe list`): skipped, with its ground truth")
            continue
        server = SERVER_FOR_NETTEST.get(nettest)
        if server is not None and shutil.which(server) is None:
            warnings.append(f"nettest {nettest!r} needs the {server} binary for the lab's server: skipped (scripts/install.sh)")
            continue
        runnable.append(nettest)
    return tuple(runnable), warnings


def stamp_arguments(scenario: Scenario, isp: Isp, day: dt.date, policy: ScenarioPolicy) -> list[str]:
    """The probe options that make a lab measurement look as if taken on `day` from `isp`."""
    when = dt.datetime.combine(day, scenario.probe_time).strftime("%Y-%m-%d %H:%M:%S")
    return [
        "--measurement-time", when,
        "--probe-asn", isp.asn,
        "--probe-cc", isp.cc,
        "--probe-network-name", isp.network_name,
        "--annotation", f"wallwatch_scenario={scenario.name}",
        "--annotation", f"wallwatch_isp={isp.id}",
        "--annotation", f"wallwatch_policy={policy.name}",
    ]


def truth_rows(
    scenario: Scenario, isp: Isp, day: dt.date, policy: ScenarioPolicy, service: str,
    measurement: Mapping[str, Any] | None, error: str | None = None,
) -> list[TruthRow]:
    observed = observed_features(measurement) if measurement is not None else {}
    missing = Observed("error" if error else "missing", None)
    return [
        TruthRow(
            scenario.name, day.isoformat(), isp.id, isp.asn, isp.cc, policy.name, service, feature, expected,
            observed.get(feature, missing), measurement.get("report_id") if measurement else None, error,
        )
        for feature, expected in policy.truth[service].items()
    ]


def replay(
    scenario: Scenario,
    out_dir: Path,
    *,
    days_per_phase: int | None = None,
    start: dt.date | None = None,
    end: dt.date | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    on_day: Callable[[dt.date, list[TruthRow], float], None] | None = None,
    on_status: Callable[[str], None] | None = None,
    live: LiveTarget | None = None,
) -> ReplayReport:
    """Replay `scenario` in a fresh multi-ISP lab (torn down at the end, also on failure); with `live`,
    submit each day's measurements to a collector as the day ends (see the module's docstring)."""
    days = scenario.sample_days(days_per_phase, start, end)
    probes, warnings = runnable_probes(scenario)
    report = ReplayReport(scenario, days, probes, warnings=warnings)
    if not probes:
        raise RuntimeError("none of the scenario's nettests can run here: " + "; ".join(warnings))
    out_dir.mkdir(parents=True, exist_ok=True)
    report.measurements_path, report.truth_path = out_dir / "measurements.jsonl", out_dir / "ground_truth.jsonl"
    for path in (report.measurements_path, report.truth_path):
        path.write_text("")
    scratch = Path(tempfile.mkdtemp(prefix="wallwatch-replay-"))  # the lab's state: never the user's own lab
    status = on_status or (lambda message: None)
    submitter = _LiveSubmitter(live, out_dir, scratch) if live is not None else None
    if submitter is not None:
        report.live_path = submitter.log_path
    try:
        started = time.monotonic()
        status(f"bringing up a lab with {len(scenario.isps)} ISPs")
        servers = sorted({SERVER_FOR_NETTEST[p] for p in probes if p in SERVER_FOR_NETTEST})
        with Lab.up(isps=scenario.isps, state_path=scratch / "lab.json", vpn_servers=servers) as lab:
            report.setup_seconds = time.monotonic() - started
            in_force: dict[str, str] = {}
            for day in days:
                day_started = time.monotonic()
                status(f"{day}: putting the policies in force")
                policies = {isp.id: scenario.policy_on(day, isp.id) for isp in scenario.isps}
                changed = {i: p.censor_policy() for i, p in policies.items() if in_force.get(i) != p.name}
                if changed:
                    lab.set_policies(changed)
                    in_force.update({i: policies[i].name for i in changed})
                status(f"{day}: probing {', '.join(probes)} from {len(scenario.isps)} ISPs")
                rows, measurements = _probe_day(lab, scenario, day, policies, probes, timeout, scratch,
                                                report.measurements_path)
                if submitter is not None:
                    status(f"{day}: submitting {len(measurements)} measurements to {live.collector}")
                    report.submitted += submitter.submit_day(day, day_started, measurements)
                report.rows += rows
                with report.truth_path.open("a") as handle:
                    handle.writelines(json.dumps(row.as_dict(), sort_keys=True) + "\n" for row in rows)
                if live is not None:  # a simulated day lasts at least day_seconds
                    time.sleep(max(0.0, day_started + live.day_seconds - time.monotonic()))
                seconds = time.monotonic() - day_started
                report.seconds_per_day.append(seconds)
                if on_day is not None:
                    on_day(day, rows, seconds)
            status("tearing the lab down")
        if submitter is not None:
            report.unsent = submitter.finish()
            if report.unsent:
                report.warnings.append(f"{report.unsent} measurement(s) could not be submitted to {live.collector} "
                                       f"(kept in {submitter.spool_dir})")
    finally:
        if submitter is not None:
            submitter.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return report


class _LiveSubmitter:
    """Each day's measurements through a durable spool to the collector, and the day's row in live.jsonl."""

    def __init__(self, live: LiveTarget, out_dir: Path, scratch: Path) -> None:
        from wallwatch.probe.submit import CollectorClient, Spool

        self.live = live
        self.client = CollectorClient(live.collector, token=live.token)
        # Kept with the output, not the scratch folder: what could not be sent survives the replay.
        self.spool_dir = out_dir / "spool"
        self.spool = Spool(self.spool_dir)
        self.log_path = out_dir / "live.jsonl"
        self.log_path.write_text("")
        self._epoch_offset = time.time() - time.monotonic()

    def submit_day(self, day: dt.date, day_started: float, measurements: Sequence[Mapping[str, Any]]) -> int:
        for measurement in measurements:
            self.spool.append(measurement)
        result = self.spool.drain(self.client)
        row = {"day": day.isoformat(), "started": round(day_started + self._epoch_offset, 3),
               "submitted": round(time.time(), 3), "measurements": len(measurements), "sent": result.sent,
               "error": result.error, "uids": list(result.uids)}
        with self.log_path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        return result.sent

    def finish(self) -> int:
        """A last try for anything the collector did not take during the run; what is left, counted."""
        if self.spool.count():
            self.spool.drain(self.client)
        return self.spool.count()

    def close(self) -> None:
        self.spool.close()


def _probe_day(
    lab: Lab, scenario: Scenario, day: dt.date, policies: Mapping[str, ScenarioPolicy], probes: Sequence[str],
    timeout: float, scratch: Path, measurements_path: Path,
) -> tuple[list[TruthRow], list[dict[str, Any]]]:
    """Every nettest from every ISP at once: one probe process per ISP, running all the day's nettests
    concurrently (`probe_many_in_lab`), so a day costs one interpreter start per ISP and its slowest
    nettest; the truth rows and the day's measurements (also appended to `measurements_path`)."""

    def one(isp: Isp) -> tuple[list[dict[str, Any]], list[TruthRow]]:
        policy = policies[isp.id]
        try:
            measurements, error = probe_many_in_lab(
                lab, scratch / f"{isp.id}.jsonl", timeout, probes, stamp_arguments(scenario, isp, day, policy),
                options=scenario.options, isp=isp.id)
        except Exception as exc:  # a failed probe run is a finding for that ISP's cells, not the end of the replay
            measurements, error = {}, f"{exc.__class__.__name__}: {exc}"
        rows: list[TruthRow] = []
        for nettest in probes:
            measurement = measurements.get(nettest)
            cell_error = None if measurement is not None else (error or "no measurement")[:2000]
            rows += truth_rows(scenario, isp, day, policy, nettest, measurement, cell_error)
        return [measurements[n] for n in probes if n in measurements], rows

    with ThreadPoolExecutor(max_workers=len(scenario.isps)) as pool:
        results = list(pool.map(one, scenario.isps))
    rows: list[TruthRow] = []
    measurements: list[dict[str, Any]] = []
    with measurements_path.open("a") as handle:
        for isp_measurements, isp_rows in results:
            handle.writelines(json.dumps(m, sort_keys=True) + "\n" for m in isp_measurements)
            measurements += isp_measurements
            rows += isp_rows
    return rows, measurements


# --- the summary -----------------------------------------------------------------


def _cell(rows: list[TruthRow]) -> str:
    """One day x ISP: the policy, then one coloured letter per feature; a mismatch is marked `!`."""
    if not rows:
        return "-"
    parts = []
    for row in rows:
        letter = FEATURE_LETTERS.get(row.feature, row.feature[:1].upper())
        colour = VERDICT_COLOURS.get(row.observed.verdict, "magenta")
        parts.append(f"[{colour}]{letter}[/]" if row.match else f"[bold {colour} reverse]{letter}![/]")
    return f"{rows[0].policy}\n{''.join(parts)}"


def render_summary(console: Any, report: ReplayReport) -> None:
    from rich.table import Table

    scenario = report.scenario
    table = Table(title=f"wallwatch lab replay: {scenario.name}", show_lines=False)
    table.add_column("day", style="bold")
    for isp in scenario.isps:
        table.add_column(f"{isp.name or isp.id}\n{isp.asn}")
    by_cell: dict[tuple[str, str], list[TruthRow]] = {}
    for row in report.rows:
        by_cell.setdefault((row.date, row.isp), []).append(row)
    for day in report.days:
        label = f"{day} {day.strftime('%a')}"
        table.add_row(label, *(_cell(by_cell.get((day.isoformat(), isp.id), [])) for isp in scenario.isps))
    console.print(table)
    legend = ", ".join(f"{letter} {feature}" for feature, letter in FEATURE_LETTERS.items())
    console.print(f"[dim]{legend}; [green]ok[/] [red]blocked[/] [yellow]down[/] [magenta]other[/]; X! = differs from the ground truth[/]")
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    mismatches = report.mismatches
    if mismatches:
        mismatch_table = Table("day", "ISP", "feature", "expected", "observed", "evidence", title="mismatches")
        for row in mismatches:
            evidence = row.error or (row.observed.evidence[0] if row.observed.evidence else "")
            mismatch_table.add_row(row.date, row.isp, f"{row.service}.{row.feature}", str(row.expected), str(row.observed), evidence[:160])
        console.print(mismatch_table)
    per_day = report.seconds_per_day
    mean = sum(per_day) / len(per_day) if per_day else 0.0
    console.print(
        f"{len(report.days)} days x {len(scenario.isps)} ISPs x {len(report.probes)} nettests; lab up in "
        f"{report.setup_seconds:.1f} s, {mean:.1f} s per day (max {max(per_day, default=0):.1f} s); "
        f"measurements: {report.measurements_path}; ground truth: {report.truth_path}"
    )
    if report.live_path is not None:
        console.print(f"submitted {report.submitted} measurements live ({report.live_path})"
                      + (f"; [red]{report.unsent} not submitted[/]" if report.unsent else ""))
    if mismatches:
        console.print(f"[bold red]{len(mismatches)} of {len(report.rows)} feature verdicts differ from the ground truth[/]")
    else:
        console.print(f"[bold green]all {len(report.rows)} feature verdicts match the ground truth[/]")
