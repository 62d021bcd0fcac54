"""Scenario timelines: simulated days, ISPs, named policies with their ground truth.

A scenario (docs/scenarios.md) says, for every simulated day and every ISP,
which censor policy is in force and what the probe must report while it is:
per service (nettest) and feature, a verdict and, if blocked, the method. It
is data, validated here with errors naming the file, line and key, so a
researcher can write their own. `wallwatch.lab.replay` plays it in the lab.

Also here, shared with `wallwatch demo`: `Expectation`/`Observed` (one
feature's ground truth and what the probe saw), `observed_features` and
`probe_in_lab` (the real probe in a lab client namespace).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Sequence

from wallwatch.lab.topology import ISP_ID_PATTERN, Isp
from wallwatch.vocabulary import METHODS, NETTEST_FEATURES, VERDICTS, qualifiers
from wallwatch.yamlfile import YamlDocument, YamlError, load_yaml

# A scenario's truth must name every feature its nettest reports, so no feature goes
# unchecked; nettests the vocabulary does not list are taken as written.
KNOWN_FEATURES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {nettest: tuple(map(str, features)) for nettest, features in NETTEST_FEATURES.items()}
)
DEFAULT_PROBE_TIME = dt.time(12, 0, 0)  # UTC; any time of day would do, noon reads well

_TOP_KEYS = {"name", "description", "start", "end", "probes", "probe_time", "isps", "policies", "periods", "options"}
_ISP_KEYS = {"id", "name", "asn", "cc", "network_name"}
_POLICY_KEYS = {"description", "rules", "truth"}
_PERIOD_KEYS = {"from", "to", "policy", "isps", "note"}


# --- ground truth and observations (shared with the demo) ----------------------


@dataclass(frozen=True, slots=True)
class Expectation:
    """What the probe must report for one feature: a verdict and, if blocked, how."""

    verdict: str
    method: str | None

    @classmethod
    def parse(cls, text: str) -> "Expectation":
        verdict, _, method = text.partition("/")
        return cls(verdict, method or None)

    def matches(self, observed: "Observed") -> bool:
        return observed.verdict == self.verdict and (self.method is None or observed.method == self.method)

    def __str__(self) -> str:
        return f"{self.verdict}/{self.method}" if self.method else self.verdict


@dataclass(frozen=True, slots=True)
class Observed:
    verdict: str
    method: str | None
    evidence: tuple[str, ...] = ()
    partial: bool | None = None
    blocked_share: float | None = None

    def __str__(self) -> str:
        return f"{self.verdict}/{self.method}" if self.method else self.verdict


def observed_features(measurement: Mapping[str, Any]) -> dict[str, Observed]:
    """Per feature, what the probe's measurement says (its `x_wallwatch.features`)."""
    features = measurement.get("test_keys", {}).get("x_wallwatch", {}).get("features", {})
    return {
        name: Observed(
            result.get("verdict", "unknown"),
            result.get("method"),
            tuple(result.get("evidence") or ()),
            result.get("partial"),
            result.get("blocked_share"),
        )
        for name, result in features.items()
    }


def probe_in_lab(
    lab: Any,
    output: Path,
    timeout: float,
    extra_args: Sequence[str] | None = None,
    *,
    nettest: str = "whatsapp",
    isp: str | None = None,
) -> dict[str, Any]:
    """Run the real probe (`wallwatch probe run NETTEST`) in a lab client namespace; return its measurement."""
    output.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "wallwatch.cli", "probe", "run", nettest, "--output", str(output)]
    argv += ["--timeout", str(timeout), *(extra_args or [])]
    result = lab.run_in_client(argv, timeout=timeout * 6 + 60, isp=isp)
    if result.returncode != 0 or not output.exists():
        raise RuntimeError(
            f"probe {nettest} failed (exit {result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
        )
    lines = [line for line in output.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1])


def probe_many_in_lab(
    lab: Any,
    output: Path,
    timeout: float,
    nettests: Sequence[str],
    extra_args: Sequence[str] | None = None,
    *,
    options: Mapping[str, Mapping[str, str]] | None = None,
    isp: str | None = None,
) -> tuple[dict[str, dict[str, Any]], str | None]:
    """Several nettests in one probe process (`wallwatch probe run A B C`), all at once.

    Returns the measurements by nettest, and an error text when the process failed or some nettest
    wrote nothing (those that did are kept: a crashed nettest is a finding for its own rows only).
    `options`: nettest -> {key: value}, passed as `--option NETTEST.key=value`."""
    output.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "wallwatch.cli", "probe", "run", *nettests, "--output", str(output),
            "--timeout", str(timeout), "--quiet", *(extra_args or [])]
    for nettest, settings in (options or {}).items():
        if nettest in nettests:
            argv += [arg for key, value in settings.items() for arg in ("--option", f"{nettest}.{key}={value}")]
    result = lab.run_in_client(argv, timeout=timeout * 6 + 60, isp=isp)
    measurements: dict[str, dict[str, Any]] = {}
    if output.exists():
        for line in output.read_text().splitlines():
            if line.strip():
                measurement = json.loads(line)
                measurements[measurement["test_name"]] = measurement
    missing = [n for n in nettests if n not in measurements]
    error = None
    if result.returncode != 0 or missing:
        error = (f"probe {' '.join(nettests)} exited {result.returncode}, no measurement of {', '.join(missing) or '-'}:"
                 f"\n{result.stdout[-1500:]}\n{result.stderr[-3000:]}")
    return measurements, error


# --- the scenario ----------------------------------------------------------------


class ScenarioError(ValueError):
    """A scenario file is malformed; the message names the file, line and key."""


@dataclass(frozen=True, slots=True)
class ScenarioPolicy:
    """A named censor policy and its ground truth: service -> feature -> Expectation."""

    name: str
    description: str
    rules: tuple[Mapping[str, Any], ...]
    truth: Mapping[str, Mapping[str, Expectation]]

    def censor_policy(self) -> dict[str, Any]:
        """The policy document `wallwatch censor run` loads."""
        return {"name": self.name, "description": self.description, "rules": [dict(rule) for rule in self.rules]}


@dataclass(frozen=True, slots=True)
class Period:
    """`policy` is in force from `start` to `end` (both inclusive) on `isps` (None: every ISP)."""

    start: dt.date
    end: dt.date
    policy: str
    isps: tuple[str, ...] | None
    note: str
    line: int

    def covers(self, day: dt.date, isp: str) -> bool:
        return self.start <= day <= self.end and (self.isps is None or isp in self.isps)


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    start: dt.date
    end: dt.date
    probes: tuple[str, ...]
    probe_time: dt.time
    isps: tuple[Isp, ...]
    policies: Mapping[str, ScenarioPolicy]
    periods: tuple[Period, ...]
    source: str = ""
    # Each nettest's own settings for the whole timeline (`--option key=value`), e.g. whatsapp's
    # `opening: "2017"`: the replay runs the era's client.
    options: Mapping[str, Mapping[str, str]] = field(default_factory=lambda: MappingProxyType({}))
    _by_day: dict[tuple[dt.date, str], Period] = field(default_factory=dict, repr=False, compare=False)

    def period_on(self, day: dt.date, isp: str) -> Period:
        """The period in force on `day` for ISP `isp` (validation made it unique)."""
        if not self._by_day:
            for period in self.periods:
                for d in _days(period.start, period.end):
                    for isp_id in period.isps or [i.id for i in self.isps]:
                        self._by_day[(d, isp_id)] = period
        try:
            return self._by_day[(day, isp)]
        except KeyError:
            raise KeyError(f"{day} for ISP {isp} is outside scenario {self.name} ({self.start}..{self.end})") from None

    def policy_on(self, day: dt.date, isp: str) -> ScenarioPolicy:
        return self.policies[self.period_on(day, isp).policy]

    def days(self) -> list[dt.date]:
        return list(_days(self.start, self.end))

    def change_days(self) -> list[dt.date]:
        """Days on which some ISP's policy differs from the day before (and the first day)."""
        changes = [self.start]
        for day in _days(self.start + dt.timedelta(days=1), self.end):
            before = day - dt.timedelta(days=1)
            if any(self.period_on(day, i.id).policy != self.period_on(before, i.id).policy for i in self.isps):
                changes.append(day)
        return changes

    def sample_days(
        self, per_phase: int | None = None, start: dt.date | None = None, end: dt.date | None = None
    ) -> list[dt.date]:
        """The days a replay probes: all, or the first `per_phase` days of every phase, within start..end.

        A phase is a run of days with the same policy on one ISP; every change
        day starts one, so change days are always sampled. `start`/`end`
        clip the range (a phase cut by `start` begins at `start`).
        """
        lo, hi = max(start or self.start, self.start), min(end or self.end, self.end)
        if lo > hi:
            raise ScenarioError(f"{self.source}: no days between {lo} and {hi} (the scenario runs {self.start}..{self.end})")
        days = list(_days(lo, hi))
        if per_phase is None:
            return days
        if per_phase < 1:
            raise ValueError("days per phase must be at least 1")
        chosen: set[dt.date] = set()
        for isp in self.isps:
            run_length = 0
            for index, day in enumerate(days):
                same = index > 0 and self.period_on(day, isp.id).policy == self.period_on(days[index - 1], isp.id).policy
                run_length = run_length + 1 if same else 1
                if run_length <= per_phase:
                    chosen.add(day)
        return sorted(chosen)


def _days(start: dt.date, end: dt.date) -> Iterable[dt.date]:
    day = start
    while day <= end:
        yield day
        day += dt.timedelta(days=1)


# --- loading and validating ----------------------------------------------------


class Where:
    """Names file:line and the key path of any part of a loaded file, for error messages."""

    def __init__(self, document: YamlDocument) -> None:
        self.document = document
        self.source = document.source

    def line(self, *path: str | int) -> int:
        return self.document.line(*path)

    def error(self, path: Sequence[str | int], message: str) -> ScenarioError:
        key = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in path).replace(".[", "[")
        return ScenarioError(f"{self.document.at(*path)}: {key or 'scenario'}: {message}")


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file; ScenarioError (file:line: key: why) on any problem."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read the scenario: {exc.strerror}") from None
    return parse_scenario(text, source=str(path))


def load_document(text: str | bytes, source: str) -> Where:
    """The strict YAML loader shared with the censor's policies (duplicate keys are errors)."""
    try:
        return Where(load_yaml(text, source))
    except YamlError as exc:
        raise ScenarioError(str(exc)) from None


def parse_scenario(text: str, *, source: str = "<scenario>") -> Scenario:
    where = load_document(text, source)
    document = where.document.data
    if not isinstance(document, dict):
        raise where.error((), "a scenario is a mapping with name, start, end, isps, policies and periods"
                          + (" (the file is empty)" if where.document.empty else ""))
    check_keys(where, (), document, _TOP_KEYS)
    for key in ("name", "start", "end", "isps", "policies", "periods"):
        if key not in document:
            raise where.error((), f"missing `{key}`")
    name = _text(where, ("name",), document["name"])
    start, end = _date(where, ("start",), document["start"]), _date(where, ("end",), document["end"])
    if end < start:
        raise where.error(("end",), f"{end} is before start {start}")
    probes = parse_probes(where, document.get("probes", ["whatsapp"]))
    options = parse_options(where, document.get("options"), probes)
    isps = _isps(where, document["isps"])
    policies = _policies(where, document["policies"], probes)
    periods = _periods(where, document["periods"], policies, {isp.id for isp in isps}, start, end)
    scenario = Scenario(
        name=name,
        description=optional_text(where, ("description",), document.get("description")),
        start=start,
        end=end,
        probes=probes,
        probe_time=_time(where, ("probe_time",), document.get("probe_time", DEFAULT_PROBE_TIME)),
        isps=isps,
        policies=MappingProxyType(policies),
        periods=periods,
        source=source,
        options=options,
    )
    _check_coverage(where, scenario)
    return scenario


def check_keys(where: Where, path: tuple[str | int, ...], doc: Mapping[str, Any], allowed: set[str]) -> None:
    """Refuse a key not in `allowed`, at its line."""
    unknown = sorted(str(key) for key in doc if key not in allowed)
    if unknown:
        raise where.error((*path, unknown[0]), f"unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")


def _text(where: Where, path: tuple[str | int, ...], value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise where.error(path, f"must be a non-empty string, not {value!r}")
    return value


def optional_text(where: Where, path: tuple[str | int, ...], value: Any) -> str:
    """A description or a note: absent, or a string (not a number, a list or a mapping)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise where.error(path, f"must be text, not {value!r}")
    return value


def _date(where: Where, path: tuple[str | int, ...], value: Any) -> dt.date:
    if isinstance(value, dt.datetime):
        raise where.error(path, f"must be a date (YYYY-MM-DD), not a time {value}")
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise where.error(path, f"must be a date YYYY-MM-DD, not {value!r}") from None


def _time(where: Where, path: tuple[str | int, ...], value: Any) -> dt.time:
    if isinstance(value, dt.time):
        return value
    if isinstance(value, int):  # YAML 1.1 reads 12:00:00 unquoted as sexagesimal seconds
        return dt.time(value // 3600 % 24, value // 60 % 60, value % 60)
    try:
        return dt.time.fromisoformat(str(value))
    except ValueError:
        raise where.error(path, f"must be a time of day HH:MM:SS (UTC), not {value!r}") from None


def parse_probes(where: Where, value: Any) -> tuple[str, ...]:
    """`probes`: the nettests a scenario runs (shared with the demo's phases)."""
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise where.error(("probes",), f"must be a list of nettest names (e.g. [whatsapp, openvpn]), not {value!r}")
    if len(set(value)) != len(value):
        raise where.error(("probes",), "lists a nettest twice")
    return tuple(value)


def parse_options(where: Where, value: Any, probes: tuple[str, ...]) -> Mapping[str, Mapping[str, str]]:
    """`options: {nettest: {key: value}}`, each checked against what the nettest takes (its registry entry);
    shared with the demo's phases."""
    from wallwatch.probe.nettests import NETTESTS

    if value is None:
        return MappingProxyType({})
    if not isinstance(value, dict):
        raise where.error(("options",), "must be a mapping nettest -> {option: value} (e.g. whatsapp: {opening: 2017})")
    options: dict[str, Mapping[str, str]] = {}
    for nettest, settings in value.items():
        path: tuple[str | int, ...] = ("options", str(nettest))
        if nettest not in probes:
            raise where.error(path, f"{nettest!r} is not in `probes` ({', '.join(probes)})")
        if nettest not in NETTESTS:
            raise where.error(path, f"no nettest {nettest!r} here to take options (`wallwatch probe list`)")
        if not isinstance(settings, dict) or not settings:
            raise where.error(path, "must be a mapping option -> value")
        # YAML reads 2017 as a number; an option's value is the text the CLI would take.
        texts = {str(key): str(raw) for key, raw in settings.items()}
        try:
            NETTESTS[nettest].check_options(texts)
        except ValueError as exc:
            raise where.error((*path, next(iter(texts))), str(exc)) from None
        options[str(nettest)] = MappingProxyType(texts)
    return MappingProxyType(options)


def _isps(where: Where, value: Any) -> tuple[Isp, ...]:
    if not isinstance(value, list) or not value:
        raise where.error(("isps",), "must be a non-empty list of ISPs (id, name, asn, cc, network_name)")
    isps: list[Isp] = []
    for index, raw in enumerate(value):
        path: tuple[str | int, ...] = ("isps", index)
        if not isinstance(raw, dict):
            raise where.error(path, "an ISP is a mapping with id, name, asn, cc, network_name")
        check_keys(where, path, raw, _ISP_KEYS)
        for key in sorted(_ISP_KEYS):
            if key not in raw:
                raise where.error(path, f"missing `{key}`")
        fields = {key: str(raw[key]) for key in _ISP_KEYS}
        if not ISP_ID_PATTERN.match(fields["id"]):
            raise where.error((*path, "id"), f"{fields['id']!r} must match {ISP_ID_PATTERN.pattern}")
        if any(isp.id == fields["id"] for isp in isps):
            raise where.error((*path, "id"), f"duplicate ISP id {fields['id']!r}")
        try:
            isps.append(Isp(**fields))
        except ValueError as exc:
            key = "asn" if "asn" in str(exc) else "cc" if " cc " in str(exc) else "id"
            raise where.error((*path, key), str(exc)) from None
    return tuple(isps)


def _policies(where: Where, value: Any, probes: tuple[str, ...]) -> dict[str, ScenarioPolicy]:
    if not isinstance(value, dict) or not value:
        raise where.error(("policies",), "must be a mapping of policy name -> {rules, truth}")
    policies: dict[str, ScenarioPolicy] = {}
    for name, raw in value.items():
        path: tuple[str | int, ...] = ("policies", str(name))
        if not isinstance(raw, dict):
            raise where.error(path, "a policy is a mapping with rules and truth")
        check_keys(where, path, raw, _POLICY_KEYS)
        for key in ("rules", "truth"):
            if key not in raw:
                raise where.error(path, f"missing `{key}`")
        rules = raw["rules"]
        if not isinstance(rules, list):
            raise where.error((*path, "rules"), "must be a list of censor rules (docs/censor.md; `rules: []` for none)")
        description = optional_text(where, (*path, "description"), raw.get("description"))
        policy = ScenarioPolicy(str(name), description, tuple(rules), _truth(where, path, raw["truth"], probes))
        check_censor_policy(where, path, policy.censor_policy())
        policies[str(name)] = policy
    return policies


def check_censor_policy(where: Where, path: tuple[str | int, ...], policy: Mapping[str, Any]) -> None:
    """Validate a censor policy written inside this file at `path`; the censor's complaint is
    named at its own line (the rule, the key), not at the policy's."""
    from wallwatch.censor.policy import PolicyError, parse_policy

    try:
        parse_policy(policy, path=str(policy.get("name") or ""))
    except PolicyError as exc:
        raise where.error((*path, *exc.path), f"the censor refuses it: {exc}") from None


def _truth(
    where: Where, path: tuple[str | int, ...], value: Any, probes: tuple[str, ...]
) -> Mapping[str, Mapping[str, Expectation]]:
    path = (*path, "truth")
    if not isinstance(value, dict):
        raise where.error(path, "must be a mapping service -> {feature: verdict[/method]}")
    missing = [probe for probe in probes if probe not in value]
    if missing:
        raise where.error(path, f"no ground truth for probed service {missing[0]!r} (probes: {', '.join(probes)})")
    truth: dict[str, Mapping[str, Expectation]] = {}
    for service, features in value.items():
        service_path = (*path, str(service))
        if service not in probes:
            raise where.error(service_path, f"{service!r} is not in `probes` ({', '.join(probes)})")
        if not isinstance(features, dict) or not features:
            raise where.error(service_path, "must be a mapping feature -> verdict[/method]")
        known = KNOWN_FEATURES.get(str(service))
        if known is not None:
            unknown = [f for f in features if f not in known]
            if unknown:
                raise where.error((*service_path, str(unknown[0])), f"{service} has no feature {unknown[0]!r} (features: {', '.join(known)})")
            absent = [f for f in known if f not in features]
            if absent:
                raise where.error(service_path, f"no ground truth for feature {absent[0]!r} (every feature of {service} needs one)")
        truth[str(service)] = MappingProxyType(
            {str(f): parse_expectation(where, (*service_path, str(f)), text) for f, text in features.items()}
        )
    return MappingProxyType(truth)


def parse_expectation(where: Where, path: tuple[str | int, ...], value: Any) -> Expectation:
    if not isinstance(value, str):
        raise where.error(path, f"must be verdict or verdict/method (e.g. blocked/tls_sni), not {value!r}")
    expectation = Expectation.parse(value.strip())
    if expectation.verdict not in VERDICTS:
        raise where.error(path, f"unknown verdict {expectation.verdict!r} (verdicts: {', '.join(VERDICTS)})")
    if expectation.method is not None:
        allowed = qualifiers(expectation.verdict)
        if not allowed:
            raise where.error(path, f"only a blocked or throttled verdict has a method, not {expectation.verdict!r}")
        if expectation.method not in allowed:
            what = "methods" if allowed == METHODS else "kinds of throttling"
            raise where.error(path, f"unknown method {expectation.method!r} ({what}: {', '.join(allowed)})")
    return expectation


def _periods(
    where: Where, value: Any, policies: Mapping[str, ScenarioPolicy], isp_ids: set[str], start: dt.date, end: dt.date
) -> tuple[Period, ...]:
    if not isinstance(value, list) or not value:
        raise where.error(("periods",), "must be a non-empty list of {from, to, policy[, isps][, note]}")
    periods = []
    for index, raw in enumerate(value):
        path: tuple[str | int, ...] = ("periods", index)
        if not isinstance(raw, dict):
            raise where.error(path, "a period is a mapping with from, to, policy and optionally isps, note")
        check_keys(where, path, raw, _PERIOD_KEYS)
        for key in ("from", "to", "policy"):
            if key not in raw:
                raise where.error(path, f"missing `{key}`")
        first, last = _date(where, (*path, "from"), raw["from"]), _date(where, (*path, "to"), raw["to"])
        if last < first:
            raise where.error((*path, "to"), f"{last} is before `from` {first}")
        if first < start or last > end:
            raise where.error((*path, "from" if first < start else "to"), f"{first}..{last} is outside the scenario's {start}..{end}")
        policy = str(raw["policy"])
        if policy not in policies:
            raise where.error((*path, "policy"), f"no policy {policy!r} (policies: {', '.join(policies)})")
        isps = raw.get("isps")
        if isps is not None:
            if not isinstance(isps, list) or not isps:
                raise where.error((*path, "isps"), "must be a non-empty list of ISP ids")
            unknown = [str(i) for i in isps if str(i) not in isp_ids]
            if unknown:
                raise where.error((*path, "isps"), f"no ISP {unknown[0]!r} (ISPs: {', '.join(sorted(isp_ids))})")
            isps = tuple(str(i) for i in isps)
        periods.append(Period(first, last, policy, isps, optional_text(where, (*path, "note"), raw.get("note")),
                              where.line(*path)))
    return tuple(periods)


def _check_coverage(where: Where, scenario: Scenario) -> None:
    """Every (day, ISP) is in exactly one period: a gap or an overlap is a mistake, named with both lines."""
    seen: dict[tuple[dt.date, str], Period] = {}
    for period in scenario.periods:
        for day in _days(period.start, period.end):
            for isp in period.isps or [i.id for i in scenario.isps]:
                if (day, isp) in seen:
                    other = seen[(day, isp)]
                    raise ScenarioError(
                        f"{scenario.source}:{period.line}: periods: this period overlaps the one at line {other.line} "
                        f"on {day} for ISP {isp} (each day has one policy per ISP)"
                    )
                seen[(day, isp)] = period
    for day in scenario.days():
        for isp in scenario.isps:
            if (day, isp.id) not in seen:
                raise where.error(("periods",), f"no period covers {day} for ISP {isp.id} (every day from start to end needs one)")
    scenario._by_day.update(seen)


ISO_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_day(text: str) -> dt.date:
    """A --from/--to date (YYYY-MM-DD), ValueError otherwise."""
    if not ISO_DAY.match(text):
        raise ValueError(f"{text!r} is not a date YYYY-MM-DD")
    return dt.date.fromisoformat(text)
