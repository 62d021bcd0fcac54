"""Observations agree with OONI's own minipipeline (`analysis_classic.json`) on the probe-cli cases.

OONI's classic view (`Linear`) has one entry per DNS answer and per endpoint of the
*classic* Web Connectivity flow. For each, wallwatch's observation with the same
transaction id and address must show the same DNS/TCP/TLS/HTTP outcome.

Known, explained differences (asserted, so a change shows up):
* wallwatch keeps endpoints OONI's classic view leaves out: the `fetch_body=false`
  TLS connects that validate addresses (E001), the udp/doh resolutions (E003/E004)
  and the connects to addresses that only udp/doh or the test helper returned (E005,
  e.g. 16 extra endpoints in case issue-2456); they are extra rows, never contradicting ones.
* OONI's Linear lists IP answers only; wallwatch also keeps CNAME-like answers
  (e.g. `dns.google.`) in `dns_answers`.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from wallwatch.analysis.ingest.pipeline import ingest
from wallwatch.analysis.verdicts.observations import is_bogon, split_address
from wallwatch.analysis.store import Store

CASES = [
    "probe-cli-cmd-minipipeline",
    "probe-cli-minipipeline-manual-8844",
    "probe-cli-minipipeline-manual-dnsgoogle80",
    "probe-cli-minipipeline-manual-firefoxcom",
    "probe-cli-minipipeline-manual-issue-2456",
]


def _blank(value: str | None) -> str | None:
    return None if value in ("", None) else value


@pytest.mark.parametrize("case", CASES)
def test_outcomes_agree_with_ooni_analysis_classic(case: str, samples_dir: Path, data_dir: Path) -> None:
    expected = orjson.loads((samples_dir / case / "analysis_classic.json").read_bytes())
    ingest([samples_dir / case / "measurement.json"], data_dir)
    rows = Store(data_dir).read("observations").to_pylist()
    endpoints = {(r["transaction_id"], r["ip"], r["port"]): r for r in rows if r["dns_engine"] is None}
    dns = {(r["transaction_id"], r["dns_engine"]): r for r in rows if r["dns_engine"] is not None}
    compared = 0
    for entry in expected["Linear"]:
        if entry["Type"] == 0:  # a DNS answer
            row = dns[(entry["TransactionID"], entry["DNSEngine"])]
            assert _blank(entry["DNSLookupFailure"]) == row["dns_failure"]
            assert entry["IPAddress"] in row["dns_answers"]
            assert row["hostname"] == entry["DNSDomain"]
            assert bool(entry["IPAddressBogon"]) == is_bogon(entry["IPAddress"])
            compared += 1
            continue
        ip, port = split_address(entry["EndpointAddress"])
        row = endpoints[(entry["TransactionID"], ip, port)]
        assert _blank(entry["TCPConnectFailure"]) == row["tcp_failure"], entry["EndpointAddress"]
        assert row["tcp_success"] is (entry["TCPConnectFailure"] == "")
        if entry["TLSHandshakeFailure"] is None:
            assert row["tls_server_name"] is None
        else:
            assert _blank(entry["TLSHandshakeFailure"]) == row["tls_failure"]
            assert row["tls_server_name"] == entry["TLSServerName"]
        if entry["HTTPFailure"] is None:
            assert row["http_url"] is None
        else:
            assert _blank(entry["HTTPFailure"]) == row["http_failure"]
            assert row["http_status"] == entry["HTTPResponseStatusCode"]
            assert row["http_url"] == entry["HTTPRequestURL"]
        # OONI's Type is the deepest step reached: 1 TCP, 2 TLS, 3 HTTP.
        deepest = 3 if row["http_url"] else 2 if row["tls_server_name"] is not None else 1
        assert deepest == entry["Type"]
        compared += 1
    assert compared == len(expected["Linear"]) > 0
    # The explained differences: only extra rows, each from the classic view's exclusions.
    linear_endpoints = {e["TransactionID"] for e in expected["Linear"] if e["Type"] > 0}
    measurement = orjson.loads((samples_dir / case / "measurement.json").read_bytes())
    no_body = {t["transaction_id"] for t in measurement["test_keys"]["tcp_connect"] if "fetch_body=false" in t["tags"]}
    system_answers = {a for r in dns.values() if r["dns_engine"] == "getaddrinfo" for a in r["dns_answers"]}
    input_ip = split_address(measurement["input"].split("/")[2])[0]
    for (tid, ip, _), row in endpoints.items():
        if tid not in linear_endpoints:
            explained = tid in no_body or (ip not in system_answers and ip != input_ip)
            assert explained, f"endpoint {tid} ({ip}) is in neither OONI's classic view nor an extension's"
    for (_, engine), row in dns.items():
        assert engine in ("getaddrinfo", "udp", "doh"), engine


def test_legacy_events_without_transaction_ids_join_by_address(samples_dir: Path, data_dir: Path) -> None:
    ingest([samples_dir / "ts-029-signal.example.json"], data_dir)
    rows = Store(data_dir).read("observations").to_pylist()
    endpoints = [r for r in rows if r["dns_engine"] is None]
    # Four Signal hosts: each endpoint row carries its TCP connect, TLS handshake and GET together.
    joined = {r["hostname"]: (r["tcp_success"], r["tls_failure"], r["http_status"]) for r in endpoints if r["http_url"]}
    assert joined == {
        "sfu.voip.signal.org": (True, None, 503),
        "storage.signal.org": (True, None, 404),
        "cdsi.signal.org": (True, None, 404),
        "chat.signal.org": (True, None, 404),
    }
    assert {r["feature"] for r in endpoints} == {"calls", "storage", "contacts", "text"}


def test_garbage_test_keys_never_raise(samples_dir: Path, data_dir: Path, tmp_path: Path) -> None:
    base = orjson.loads((samples_dir / "ts-018-whatsapp.example.json").read_bytes())
    weird = [
        {"queries": "x", "tcp_connect": 5, "requests": [None, 1, {"request": 3}]},
        {"tcp_connect": [{"ip": 1, "port": "x", "status": None}], "tls_handshakes": [{"address": "::::"}]},
        {"queries": [{"answers": [{"ipv4": 5}, "x"], "failure": False}], "requests": [{"response": {"code": "abc"}}]},
    ]
    path = tmp_path / "weird.jsonl"
    path.write_bytes(b"".join(orjson.dumps(dict(base, report_id=f"w{i}", test_keys=tk)) + b"\n"
                              for i, tk in enumerate(weird)))
    summary = ingest([path], data_dir)
    assert (summary.stored, summary.quarantined) == (3, 0)
