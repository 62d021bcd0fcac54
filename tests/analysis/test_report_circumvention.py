"""The report names which ways around the censor still worked, per network, when the answer changed."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from wallwatch.analysis.ingest.pipeline import ingest
from wallwatch.analysis.report.html import ReportOptions, build_report, what_still_works
from wallwatch.analysis.store import Store
from wallwatch.probe.measurement import append_jsonl, build_measurement
from wallwatch.probe.verdicts import CIRCUMVENTION_RULES_VERSION


def _feature(verdict: str, method: str | None) -> dict:
    return {"verdict": verdict, "method": method, "confidence": 0.9, "rule": f"test.{verdict}", "evidence": [],
            "targets_ok": int(verdict == "ok"), "targets_total": 1, "partial": False, "blocked_share": 0.0}


def _day(path: Path, day: int, asn: str, features: dict[str, dict]) -> None:
    started = dt.datetime(2017, 9, day, 12, 0, 0)
    append_jsonl(path, build_measurement(
        {"x_wallwatch": {"rules_version": CIRCUMVENTION_RULES_VERSION, "features": features}},
        test_name="circumvention", test_version="0.1.0", started_at=started, runtime=1.0, probe_asn=asn,
        probe_cc="CN", probe_network_name="CHINANET-BACKBONE" if asn == "AS4134" else "China Mobile"))


def test_the_report_says_what_still_worked_and_when_that_changed(tmp_path: Path) -> None:
    before = {"openvpn_udp": _feature("ok", None), "shadowsocks": _feature("ok", None),
              "wireguard": _feature("ok", None), "obfs4": _feature("ok", None)}
    after = {"openvpn_udp": _feature("blocked", "protocol_dpi"), "shadowsocks": _feature("ok", None),
             "wireguard": _feature("blocked", "udp_blocking"), "obfs4": _feature("ok", None)}
    path = tmp_path / "m.jsonl"
    _day(path, 19, "AS4134", before)
    _day(path, 20, "AS4134", before)  # the same answer: no new line
    _day(path, 25, "AS4134", after)
    _day(path, 25, "AS9808", before)
    data = tmp_path / "data"
    assert ingest([path], data, workers=1).stored == 4
    found = what_still_works(Store(data))
    assert [(s.probe_asn, s.day.isoformat()) for s in found] == [(4134, "2017-09-19"), (4134, "2017-09-25"),
                                                                 (9808, "2017-09-25")]
    assert found[1].sentence == ("Shadowsocks and obfs4 worked; OpenVPN over UDP was blocked (the app's protocol "
                                 "was recognised and cut); WireGuard was blocked (the service's calls or UDP "
                                 "traffic were dropped)")
    assert found[0].sentence.startswith("OpenVPN over UDP, Shadowsocks, WireGuard and obfs4 worked")
    assert what_still_works(Store(data), ["IR"]) == []
    page = build_report(Store(data), tmp_path / "report", ReportOptions(png=False, exports=False)).index.read_text()
    assert "What still works from here" in page and "From AS4134 CHINANET-BACKBONE (CN)" in page
    assert "on Mon 25 Sep 2017</strong>: Shadowsocks and obfs4 worked" in page
