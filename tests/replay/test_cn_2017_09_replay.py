"""The cn-2017-09 timeline replayed at reduced length in a real three-ISP lab.

`wallwatch lab replay --days-per-phase 2` probes the first two days of every
phase (13 simulated days, Sept 20-26 among them) from three ISPs with the real
probe, through three real censors. Every feature's verdict and method must be
what the scenario's ground truth says, on every day, from every ISP.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from wallwatch.lab.replay import runnable_probes
from wallwatch.lab.scenario import load_scenario
from wallwatch.lab.topology import run_namespaces

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(420)]

ROOT = Path(__file__).resolve().parents[2]
CN_2017_09 = ROOT / "scenarios" / "cn-2017-09.yaml"


ALERT_SECRET = "a-replay-secret-0123456789"


@dataclass
class Run:
    """The replay, made live against a real `wallwatch serve` whose alerts go to a local receiver."""

    result: subprocess.CompletedProcess[str]
    out: Path
    data: Path
    alerts: list[dict[str, Any]]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    from wallwatch.lab.capabilities import missing_lab_features

    from tests.web.observatory import Observatory, WebhookReceiver

    missing = missing_lab_features()
    if missing:
        pytest.skip("lab unavailable: " + "; ".join(missing))
    out = tmp_path_factory.mktemp("replay")
    data = tmp_path_factory.mktemp("observatory") / "data"
    alerts = data.parent / "alerts.yaml"
    with WebhookReceiver() as receiver:
        alerts.write_text(json.dumps({"webhooks": [{"name": "lab", "url": receiver.url, "secret": ALERT_SECRET}]}))
        with Observatory(data, args=["--alerts", str(alerts)]) as server:
            result = subprocess.run(
                [sys.executable, "-m", "wallwatch.cli", "lab", "replay", str(CN_2017_09), "--out", str(out),
                 "--days-per-phase", "2", "--live", "--collector", server.url, "--day-seconds", "1"],
                capture_output=True, text=True, timeout=400, env={**os.environ, "COLUMNS": "160"},
            )
            server.wait_idle()
            entries = [json.loads(line) for line in (data / "events.jsonl").read_text().splitlines()]
            delivered = receiver.wait_for(len(entries), timeout=30)
    yield Run(result, out, data, delivered)


@pytest.fixture(scope="module")
def replayed(run: Run) -> tuple[subprocess.CompletedProcess[str], Path]:
    return run.result, run.out


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_every_feature_matches_the_ground_truth_on_every_day(replayed: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    result, out = replayed
    scenario = load_scenario(CN_2017_09)
    rows = _jsonl(out / "ground_truth.jsonl")
    mismatches = [row for row in rows if not row["match"]]
    assert result.returncode == 0 and not mismatches, (result.stdout[-6000:], result.stderr[-3000:], mismatches[:5])
    assert "match the ground truth" in " ".join(result.stdout.split())

    probes, _ = runnable_probes(scenario)
    features = {"whatsapp": 5, "openvpn": 1, "telegram": 3, "signal": 4, "facebook_messenger": 4, "wechat": 4,
                "skype": 4, "facetime": 1}
    expected_days = [str(day) for day in scenario.sample_days(2)]
    assert sorted({row["date"] for row in rows}) == expected_days
    per_cell = Counter((row["date"], row["isp"]) for row in rows)
    assert set(per_cell.values()) == {sum(features[p] for p in probes)} and len(per_cell) == len(expected_days) * 3
    assert "openvpn" in probes, "the OpenVPN nettest or the openvpn binary is missing: the replay skipped OpenVPN"
    # Each row's expectation is the policy in force that day on that ISP.
    for row in rows:
        policy = scenario.policy_on(dt.date.fromisoformat(row["date"]), row["isp"])
        expected = policy.truth[row["service"]][row["feature"]]
        assert (row["policy"], row["expected_verdict"], row["expected_method"]) == (policy.name, expected.verdict, expected.method)


def test_the_timeline_is_what_the_probe_saw(replayed: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, out = replayed
    rows = _jsonl(out / "ground_truth.jsonl")
    seen = {(r["date"], r["isp"], r["feature"]): r for r in rows if r["service"] in ("whatsapp", "openvpn")}

    def verdict(date: str, isp: str, feature: str, service: str | None = None) -> str:
        row = (seen[(date, isp, feature)] if service is None else
               next(r for r in rows if (r["date"], r["isp"], r["service"], r["feature"]) == (date, isp, service, feature)))
        return row["observed_verdict"] + (f"/{row['observed_method']}" if row["observed_method"] else "")

    # The long-standing blocks, from the first day to the last; Signal untouched throughout.
    for date in ("2017-07-01", "2017-09-25"):
        assert verdict(date, "telecom", "text", "telegram") == "blocked/tcp_ip"
        assert verdict(date, "unicom", "web", "telegram") == "blocked/dns"
        assert verdict(date, "mobile", "text", "facebook_messenger") == "blocked/dns"
        assert {verdict(date, isp, f, "signal") for isp in ASN_OF_ISP for f in ("text", "media", "storage", "calls")} == {"ok"}
    # Skype, FaceTime and WeChat read ok on every day from every ISP, while WhatsApp, Telegram and OpenVPN
    # are blocked: the censor's rules for the others touch nothing of theirs.
    left_alone = [r for r in rows if r["service"] in ("wechat", "skype", "facetime")]
    assert len(left_alone) == 9 * len({r["date"] for r in rows}) * 3
    assert {r["observed_verdict"] for r in left_alone} == {"ok"}
    assert verdict("2017-09-25", "telecom", "text") == "blocked/protocol_dpi"
    assert verdict("2017-09-25", "telecom", "tunnel") == "blocked/protocol_dpi"

    assert verdict("2017-07-01", "mobile", "media") == "ok"
    assert verdict("2017-07-18", "unicom", "media") == "blocked/tls_sni"
    assert verdict("2017-07-18", "unicom", "text") == "ok"
    assert verdict("2017-08-01", "telecom", "calls") == "ok"
    # Wednesday 20 September: text on and off on Telecom only; OpenVPN blocked everywhere.
    assert verdict("2017-09-20", "telecom", "text") == "blocked/protocol_dpi"
    assert verdict("2017-09-20", "unicom", "text") == verdict("2017-09-21", "mobile", "text") == "ok"
    assert verdict("2017-09-20", "mobile", "tunnel") == "blocked/protocol_dpi"
    assert verdict("2017-09-22", "unicom", "text") == "blocked/protocol_dpi"
    assert verdict("2017-09-22", "mobile", "text") == "ok"
    # "On and off": some chat sessions got through while the rule fired with probability 0.5 ...
    for date, isp in (("2017-09-20", "telecom"), ("2017-09-23", "mobile"), ("2017-09-24", "unicom")):
        row = seen[(date, isp, "text")]
        assert row["partial"] is True and 0 < row["blocked_share"] < 1, row
    # ... and none from Monday 25 September.
    for isp in ("telecom", "unicom", "mobile"):
        row = seen[("2017-09-25", isp, "text")]
        assert row["partial"] is False and row["blocked_share"] == 1.0, row


def test_measurements_carry_the_simulated_day_and_the_isp(replayed: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, out = replayed
    measurements = _jsonl(out / "measurements.jsonl")
    rows = _jsonl(out / "ground_truth.jsonl")
    asns = {"telecom": ("AS4134", "CHINANET-BACKBONE"), "unicom": ("AS4837", "CHINA UNICOM China169 Backbone"),
            "mobile": ("AS9808", "China Mobile Communications Group Co., Ltd.")}
    by_report = {m["report_id"]: m for m in measurements}
    assert len(by_report) == len(measurements) == len({(r["date"], r["isp"], r["service"]) for r in rows})
    for row in rows:
        m = by_report[row["measurement_report_id"]]
        assert m["measurement_start_time"] == m["test_start_time"] == f"{row['date']} 12:00:00"
        assert (m["probe_asn"], m["probe_network_name"]) == asns[row["isp"]] and m["probe_cc"] == "CN"
        assert m["test_name"] == row["service"]
        annotations = m["annotations"]
        assert annotations["wallwatch_scenario"] == "cn-2017-09" and annotations["wallwatch_isp"] == row["isp"]
        assert annotations["wallwatch_policy"] == row["policy"]
        assert annotations["wallwatch_wall_time"] > "2020"  # the real clock, kept beside the simulated one
        if m["test_name"] == "whatsapp":  # the scenario's options: 2017's clients opened with a bare WA 1 5
            assert m["test_keys"]["x_wallwatch"]["opening"] == "2017"
    run_ids = {m["test_keys"]["x_wallwatch"]["lab"]["run_id"] for m in measurements}
    assert len(run_ids) == 1  # one lab for the whole replay ...
    assert run_namespaces(run_ids.pop()) == []  # ... and it is gone


ASN_OF_ISP = {"telecom": 4134, "unicom": 4837, "mobile": 9808}


def _wallwatch(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wallwatch.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})


def test_the_observatory_finds_what_the_lab_did(replayed: tuple[subprocess.CompletedProcess[str], Path],
                                                tmp_path: Path) -> None:
    """The two halves joined: the replay's measurements, ingested by the analysis pipeline, give the
    ground truth's verdict for every (day, ISP, feature), and the detector turns them into events
    whose onsets are the scenario's, text spreading from one ISP to the next."""
    import duckdb

    _, out = replayed
    data = tmp_path / "store"
    ingest = _wallwatch("ingest", str(out / "measurements.jsonl"), "--data", str(data))
    assert ingest.returncode == 0, ingest.stderr[-2000:]
    rows = duckdb.sql(
        f"SELECT CAST(date AS VARCHAR), probe_asn, service, feature, verdict, method "
        f"FROM read_parquet('{data}/verdicts/**/*.parquet', hive_partitioning = true)").fetchall()
    stored = {(d, asn, service, feature): (verdict, method) for d, asn, service, feature, verdict, method in rows}
    truth = {(r["date"], ASN_OF_ISP[r["isp"]], r["service"], r["feature"]): (r["expected_verdict"], r["expected_method"])
             for r in _jsonl(out / "ground_truth.jsonl")}
    assert stored == truth

    listed = _wallwatch("events", "--data", str(data), "--json")
    assert listed.returncode == 0, listed.stderr[-2000:]
    events = {(e["service"], e["feature"]): e for e in map(json.loads, listed.stdout.splitlines()) if e.get("service")}
    onsets = {key: {n["probe_asn"]: n["onset"][:10] for n in e["networks"]} for key, e in events.items()}
    # The reduced run probes two days of July's media/calls phase: too short to be an event (the full
    # replay finds it, 18 July - 1 August). September's blocks are found from their first day.
    # Telegram and Messenger, blocked on every probed day, are long-standing events; Signal has none.
    long_standing = {key for key in events if key[0] in ("telegram", "facebook_messenger")}
    assert set(events) - long_standing == {("whatsapp", "text"), ("whatsapp", "media"), ("whatsapp", "calls"),
                                           ("openvpn", "tunnel")}
    assert not any(service in ("signal", "wechat", "skype", "facetime") for service, _ in events)
    # (Blocked on every probed day, they have no baseline: the detector dates them from where the
    # other services' changes start, not from the first day; only their presence is asserted.)
    assert {key[0] for key in long_standing} == {"telegram", "facebook_messenger"}
    for key in (("whatsapp", "media"), ("whatsapp", "calls"), ("openvpn", "tunnel")):
        assert onsets[key] == dict.fromkeys(ASN_OF_ISP.values(), "2017-09-20"), (key, onsets[key])
        assert events[key]["end"] is None  # kept through the Congress
    # Text: Telecom on Wednesday the 20th, Unicom on Friday the 22nd, one event growing as ISPs join.
    # (Mobile, blocked from the 23rd, has only four days of samples at the end of the reduced run.)
    text = onsets[("whatsapp", "text")]
    assert (text[4134], text[4837]) == ("2017-09-20", "2017-09-22"), text
    assert events[("whatsapp", "text")]["method"] == ["protocol_dpi"]
    # On and off at first (the rule fires on half the flows), comprehensive from Monday the 25th;
    # the other features were blocked on every attempt from the start.
    # (A final run of blocked hours is comprehensive by its span, not by its count of hours with data:
    # the reduced run samples two noons of it, 25 and 26 September, and the detector still dates it.)
    for network in events[("whatsapp", "text")]["networks"]:
        assert (network["on_and_off"], network["comprehensive_from"][:10]) == (True, "2017-09-25"), network
    for network in events[("whatsapp", "media")]["networks"]:
        assert (network["on_and_off"], network["comprehensive_from"][:10]) == (False, "2017-09-20"), network


def _day_of(moment: float, live: list[dict[str, Any]]) -> str | None:
    """The simulated day in progress at real time `moment`: the last day submitted before it."""
    submitted = [row for row in live if row["submitted"] <= moment]
    return submitted[-1]["day"] if submitted else None


def test_live_alerts_fire_on_the_simulated_days_the_batch_run_finds(run: Run, tmp_path: Path) -> None:
    """The lab's timeline, live: every event of the batch run over the same measurements was alerted,
    each network of it on the simulated day the batch run's detector raised it, within that day."""
    assert run.result.returncode == 0, (run.result.stdout[-4000:], run.result.stderr[-3000:])
    live = [json.loads(line) for line in (run.out / "live.jsonl").read_text().splitlines()]
    measurements = _jsonl(run.out / "measurements.jsonl")
    assert [row["day"] for row in live] == [str(d) for d in load_scenario(CN_2017_09).sample_days(2)]
    assert sum(row["sent"] for row in live) == len(measurements) and not any(row["error"] for row in live)
    assert "submitted 78 measurements live" in " ".join(run.result.stdout.split())

    data = tmp_path / "batch"
    assert _wallwatch("ingest", str(run.out / "measurements.jsonl"), "--data", str(data)).returncode == 0
    listed = _wallwatch("events", "--data", str(data), "--json")
    batch = [json.loads(line) for line in listed.stdout.splitlines() if line.startswith("{")]
    assert batch, listed.stderr[-2000:]
    alerts = [a["json"] | {"at": a["at"]} for a in run.alerts]
    assert len({a["alert_id"] for a in alerts}) == len(alerts)  # none twice
    for event in batch:
        key = (event["type"], event["probe_cc"], event["service"], event["feature"])
        mine = [a for a in alerts if (a["event"]["type"], a["event"]["probe_cc"], a["event"]["service"],
                                      a["event"]["feature"]) == key]
        opened = [a for a in mine if a["entry"] == "opened"]
        assert len(opened) == 1, (key, [a["entry"] for a in mine])
        # Each network raised on the day the batch detector raised it: in the opening alert if that
        # was its day, else in a network_joined alert that arrived during its day.
        seen_on = {n["probe_asn"]: _day_of(opened[0]["at"], live) for n in opened[0]["event"]["networks"]}
        for joined in (a for a in mine if a["entry"] == "network_joined"):
            seen_on.setdefault(joined["detail"]["probe_asn"], _day_of(joined["at"], live))
        expected = {n["probe_asn"]: n["alarm"][:10] for n in event["networks"]}
        assert seen_on == expected, (key, seen_on, expected)
    # Text went from on and off to comprehensive on Monday the 25th: alerted that day, or, for a
    # network the detector raised only later, on the day it joined.
    text = next(e for e in batch if (e["service"], e["feature"]) == ("whatsapp", "text"))
    comprehensive = {a["detail"]["probe_asn"]: _day_of(a["at"], live) for a in alerts
                     if a["entry"] == "network_comprehensive" and a["event"]["feature"] == "text"}
    assert comprehensive == {n["probe_asn"]: max(n["alarm"][:10], n["comprehensive_from"][:10])
                             for n in text["networks"]}, comprehensive
    assert "2017-09-25" in comprehensive.values()
