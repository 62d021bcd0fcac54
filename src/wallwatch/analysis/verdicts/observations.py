"""Facts before conclusions: one observation row per measurement x endpoint.

An observation merges what the probe saw of one endpoint: the DNS answers for
its hostname, the TCP connect, the TLS handshake and the HTTP round trip, with
OONI's failure strings kept verbatim (ooni/spec data-formats/df-007-errors.md).
This is the idea of OONI's v5 `WebObservation` (ooni/data
oonidata/models/observations.py), reduced to the columns verdicts need; the row's
columns are `rows.ObservationRow`, built here as dicts from its template for speed.

Events are joined into endpoints by `transaction_id` when the probe wrote one
(probe-cli >= 3.x), else by address ("ip:port") and then by the URL's host,
because older probes (2016-2021 samples) wrote no transaction ids. Every row is
tagged with the (service, feature, target) it measures, so verdicts can group
rows without knowing each nettest's endpoint list.

Everything here is tolerant: OONI wrote `failure: false` for "no failure" in
old formats, `tcp_connect` as a dict in openvpn, requests without a URL; none of
that may raise. A measurement we cannot make sense of yields fewer rows, never
an exception (the ingest quarantines only records that are not measurements).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

# Header is defined in rows.py beside MeasurementHead, which it extends: a class compiled by mypyc
# (analysis/compiled.py) may not extend a Python class with __slots__, and rows.py stays Python.
from wallwatch.analysis.rows import Header, ObservationRow
from wallwatch.analysis.tables import row_template
from wallwatch.analysis.verdicts.fingerprints import (
    Fingerprint,
    FingerprintDB,
    FingerprintMatch,
    load_fingerprints,
    maybe_binary_text,
)

Row = dict[str, Any]

_TH_BOGON = 1 << 2  # probe-cli model.THIPInfoFlagIsBogon

# DNS failures that are an answer from a resolver (so the network worked).
_RESOLVER_ANSWERED = frozenset({"dns_nxdomain_error", "dns_no_answer", "dns_refused_error", "dns_servfail_error"})


_HEADER_COLUMNS = tuple(field.name for field in fields(Header))


def header_row(template: Row, header: Header) -> Row:
    """A copy of a row template with the header's columns filled (then copied for each row)."""
    row = template.copy()  # a dict copy is several times cheaper than a 39-key literal or a dataclass
    for name in _HEADER_COLUMNS:
        row[name] = getattr(header, name)
    return row


@dataclass(frozen=True, slots=True)
class Target:
    service: str
    feature: str
    target: str | None


def failure_string(value: Any) -> str | None:
    """OONI failure field -> string or None (old formats wrote `false` for "no failure")."""
    if value is None or value is False or value == "":
        return None
    return value if isinstance(value, str) else str(value)


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int_or_none(value: Any) -> int | None:
    if type(value) is int:  # the common case first (bool is a subclass of int, not this type)
        return value
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


_NO_STATUS: Mapping[str, Any] = {}  # read-only stand-in for a missing/odd `status`


def _tid(entry: Mapping[str, Any]) -> int | None:
    value = entry.get("transaction_id")
    return value if value is None or type(value) is int else _int_or_none(value)


def split_address(address: Any) -> tuple[str | None, int | None]:
    """ "1.2.3.4:443" / "[::1]:443" -> (ip, port)."""
    if not isinstance(address, str) or not address:
        return None, None
    return _split_address(address)


@lru_cache(maxsize=65536)
def _split_address(address: str) -> tuple[str | None, int | None]:
    # Cached: the same few dozen addresses recur in every measurement of a test.
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, _int_or_none(rest.lstrip(":"))
    host, sep, port = address.rpartition(":")
    if not sep or ":" in host:
        return address, None
    return host, _int_or_none(port)


@lru_cache(maxsize=65536)
def is_bogon(ip: str) -> bool:
    """Private, loopback, link-local, reserved or unspecified: never a real server's address
    (OONI's `dns_bogon_error`; RFC 6890 special-purpose registries)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return not address.is_global


@lru_cache(maxsize=65536)
def url_host(url: str) -> str | None:
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


# Case-insensitive search instead of lowering the body: lower() copies up to 64 KiB per response.
_TITLE_OPEN = re.compile(r"<title", re.IGNORECASE)
_TITLE_CLOSE = re.compile(r"</title", re.IGNORECASE)
_TITLE_WINDOW = 65536


def _title(body: str | None) -> str | None:
    if not body:
        return None
    opening = _TITLE_OPEN.search(body, 0, _TITLE_WINDOW)
    if opening is None:
        return None
    start = body.find(">", opening.start(), _TITLE_WINDOW)
    closing = _TITLE_CLOSE.search(body, start, _TITLE_WINDOW) if start >= 0 else None
    if closing is None:
        return None
    return body[start + 1 : closing.start()].strip()[:256] or None


# Every column of an observation row at its default (rows.ObservationRow), copied for each row.
_ROW_TEMPLATE: Row = row_template(ObservationRow)


# -- which service/feature an endpoint belongs to ----------------------------

_WEB_FEATURE = "page"


def classify(test_name: str, test_input: str | None, hostname: str | None, ip: str | None,
             port: int | None, tags: Any) -> Target:
    """The (service, feature, target) an endpoint measures, per nettest (ooni/spec ts-0xx)."""
    host = hostname or ""
    if test_name == "web_connectivity":
        return Target("web", _WEB_FEATURE, test_input)
    if test_name in _MESSAGING_TESTS:
        # wallwatch's own events name their feature (probe/nettests/base.py); the
        # host rules below give OONI's events the same split.
        for tag in as_list(tags):
            if isinstance(tag, str) and tag.startswith("feature:"):
                return Target(test_name, tag[8:], None)
    if test_name == "whatsapp":
        if host == "v.whatsapp.net":
            return Target("whatsapp", "registration", None)
        if host.startswith("web.whatsapp"):
            return Target("whatsapp", "web", None)
        # e1..e16.whatsapp.net on 443/5222 are the chat edge servers (ts-018).
        return Target("whatsapp", "text", None)
    if test_name == "telegram":
        if host.endswith("telesco.pe"):
            return Target("telegram", "media", None)  # the file CDN (probe/nettests/telegram.py)
        if host.startswith("web.telegram") or (port == 443 and hostname and not _looks_like_ip(host)):
            return Target("telegram", "web", None)
        return Target("telegram", "text", None)  # data-centre POSTs (ts-020)
    if test_name == "signal":
        if host.startswith("sfu.voip"):
            return Target("signal", "calls", None)
        if host.startswith("cdsi") or host.startswith("api.directory") or host.startswith("contentproxy"):
            return Target("signal", "contacts", None)
        if host.startswith("cdn"):
            return Target("signal", "media", None)  # attachments (probe/nettests/signal.py)
        if host.startswith("storage"):
            return Target("signal", "storage", None)
        if host.startswith("uptime"):
            return Target("signal", "uptime", None)
        return Target("signal", "text", None)  # chat.signal.org, textsecure-service
    if test_name == "facebook_messenger":
        return Target("facebook_messenger", _facebook_feature(host), None)
    if test_name in ("vanilla_tor", "tor"):
        return Target("tor", "tunnel", test_input)
    if test_name in ("openvpn", "riseupvpn", "psiphon"):
        return Target(test_name, "tunnel", test_input)
    if test_name == "torsf":
        return Target("tor_snowflake", "tunnel", None)
    if test_name == "stunreachability":
        return Target("stun", "calls", test_input)
    if test_name == "dnscheck":
        return Target("dns", "resolver", test_input)
    if test_name == "echcheck":
        return Target("web", "ech", test_input)
    if test_name == "http_header_field_manipulation":
        return Target("middlebox", "http_headers", None)  # per network: the path, not a site
    if test_name == "http_invalid_request_line":
        return Target("middlebox", "request_line", None)
    return Target(test_name, "endpoints", test_input)


@lru_cache(maxsize=65536)
def _classify_untagged(test_name: str, test_input: str | None, hostname: str | None, ip: str | None,
                       port: int | None) -> Target:
    """`classify` of an endpoint without tags (all but wallwatch's own whatsapp events), cached:
    a measurement asks it once per row, about the same few dozen endpoints every time."""
    return classify(test_name, test_input, hostname, ip, port, None)


# The messaging nettests, OONI's and wallwatch's (vocabulary.NETTEST_FEATURES names wallwatch's features).
_MESSAGING_TESTS = frozenset({"whatsapp", "telegram", "signal", "facebook_messenger", "wechat", "viber", "skype",
                              "facetime", "keyword"})

_FB_FEATURES = {
    "b-api.facebook.com": "text",
    "b-graph.facebook.com": "text",
    "edge-mqtt.facebook.com": "text",
    "external.xx.fbcdn.net": "media",
    "scontent.xx.fbcdn.net": "media",
    "star.c10r.facebook.com": "web",
    "stun.fbsbx.com": "calls",
}


def _facebook_feature(host: str) -> str:
    return _FB_FEATURES.get(host, "endpoints")


def _looks_like_ip(host: str) -> bool:
    return bool(host) and (host[0].isdigit() or ":" in host)


# -- the extractor --------------------------------------------------------------


# Tests whose outcome is one `failure` (and `bootstrap_time`): the tunnels (ts-016/023 vanilla_tor,
# ts-040 openvpn, ts-026 riseupvpn, ts-030 torsf, ts-015 psiphon) and ts-025 stunreachability.
_OUTCOME_TESTS = frozenset({"vanilla_tor", "openvpn", "riseupvpn", "torsf", "psiphon", "stunreachability"})
_MIDDLEBOX_TESTS = frozenset({"http_header_field_manipulation", "http_invalid_request_line"})


@dataclass(slots=True)
class MeasurementFacts:
    """Observation rows of one measurement, plus the measurement-wide facts verdicts need."""

    rows: list[Row]
    any_network_success: bool  # anything at all worked: the probe was online
    # Each row whose DNS answers or HTTP response matched a fingerprint row, with the row it is named
    # by (the row's dns_fingerprint / http_fingerprint), so the verdicts need not look in every row.
    fingerprint_matches: list[tuple[Row, Fingerprint]] = field(default_factory=list)


def make_observations(header: Header, test_keys: Mapping[str, Any], test_input: str | None,
                      fingerprints: FingerprintDB | None = None) -> MeasurementFacts:
    fingerprints = fingerprints or load_fingerprints()
    builder = _Builder(header, test_input, fingerprints)
    builder.add_dns(as_list(test_keys.get("queries")))
    builder.add_tcp(test_keys.get("tcp_connect"))
    if header.test_name != "echcheck":  # echcheck's handshakes are its control and target (add_ech)
        builder.add_tls(as_list(test_keys.get("tls_handshakes")))
    builder.add_http(as_list(test_keys.get("requests")))
    if header.test_name == "web_connectivity":
        builder.add_legacy_http_failure(failure_string(test_keys.get("http_experiment_failure")))
        builder.add_control(_as_dict(test_keys.get("control")), failure_string(test_keys.get("control_failure")))
    if header.test_name in _OUTCOME_TESTS:
        builder.add_tunnel(test_keys)
    elif header.test_name == "tor":
        builder.add_outcomes(_as_dict(test_keys.get("targets")).values())
    elif header.test_name == "dnscheck":
        builder.add_outcomes(_as_dict(test_keys.get("lookups")).values(), test_keys.get("bootstrap_failure"))
    elif header.test_name == "echcheck":
        builder.add_ech(test_keys)
    elif header.test_name in _MIDDLEBOX_TESTS:
        builder.add_outcomes(())  # one row: the verdict reads `tampering` from the test keys
    return MeasurementFacts(rows=builder.rows(), any_network_success=builder.any_success,
                            fingerprint_matches=builder.fingerprint_matches)


class _Builder:
    """Joins OONI event arrays into endpoint rows (see module docstring for the join keys).

    The loops below run once per DNS answer / TCP connect / request of every measurement
    (~60 per IM measurement): fields are read with one `get` each and normalised inline
    when they already have the common type (str, int, None), else by the shared helpers.
    """

    def __init__(self, header: Header, test_input: str | None, fingerprints: FingerprintDB) -> None:
        self.header = header
        self.test_input = test_input
        self.fingerprints = fingerprints
        self.base_row = header_row(_ROW_TEMPLATE, header)
        self.dns_rows: list[Row] = []
        self.endpoint_rows: list[Row] = []
        self.by_tid_addr: dict[tuple[int | None, str | None, int | None], Row] = {}
        self.by_host: dict[str, Row] = {}
        self.ip_to_host: dict[str, str] = {}
        self.any_success = False
        self.fingerprint_matches: list[tuple[Row, Fingerprint]] = []

    def rows(self) -> list[Row]:
        rows = self.dns_rows + self.endpoint_rows
        for index, row in enumerate(rows):
            row["observation_idx"] = index
        return rows

    def _new_row(self, hostname: str | None, ip: str | None, port: int | None, tags: Any) -> Row:
        test_name = self.header.test_name
        if tags and test_name == "whatsapp":  # only whatsapp reads tags ("feature:<name>")
            target = classify(test_name, self.test_input, hostname, ip, port, tags)
        else:
            target = _classify_untagged(test_name, self.test_input, hostname, ip, port)
        row = self.base_row.copy()
        row["service"] = target.service
        row["feature"] = target.feature
        row["target"] = target.target
        row["hostname"] = hostname
        row["ip"] = ip
        row["port"] = port
        return row

    def add_dns(self, queries: list[Any]) -> None:
        merged: dict[tuple[int | None, str, str], Row] = {}
        for query in queries:
            if not isinstance(query, dict):
                continue
            hostname = query.get("hostname")
            if not isinstance(hostname, str):
                hostname = None
            engine = str(query.get("engine") or "system")
            key = (_tid(query), hostname or "", engine)
            row = merged.get(key)
            if row is None:
                row = self._new_row(hostname, None, None, query.get("tags"))
                row["transaction_id"] = key[0]
                row["dns_engine"] = engine
                resolver = query.get("resolver_address") or query.get("resolver_hostname")
                row["dns_resolver"] = resolver if isinstance(resolver, str) else None  # a string column
                row["dns_answers"] = []
                merged[key] = row
                self.dns_rows.append(row)
            failure = query.get("failure")
            if failure is not None:
                failure = failure_string(failure)
                if failure in _RESOLVER_ANSWERED:
                    self.any_success = True  # the resolver answered: the probe was online
                # A then AAAA: keep the first real failure, but answers from either type count.
                if failure and failure != "dns_no_answer" and row["dns_failure"] is None:
                    row["dns_failure"] = failure
            answers = query.get("answers")
            if answers and isinstance(answers, list):
                self._add_answers(row, answers, hostname)
        for row in merged.values():
            if row["dns_answers"]:
                self.any_success = True
            elif row["dns_failure"] is None:
                row["dns_failure"] = "dns_no_answer"

    def _add_answers(self, row: Row, answers: list[Any], hostname: str | None) -> None:
        # The hottest loop of the extractor (~30 answers per IM measurement): locals, no calls per answer
        # beyond the cached is_bogon and one dict lookup for the DNS fingerprint.
        found = row["dns_answers"]
        fingerprint_of = self.fingerprints.dns_matcher
        ip_to_host = self.ip_to_host
        for answer in answers:
            if not isinstance(answer, dict):
                continue
            ip = answer.get("ipv4") or answer.get("ipv6")
            value = ip or answer.get("hostname")
            if not isinstance(value, str):
                continue
            found.append(value)
            if row["dns_fingerprint"] is None:
                fingerprint = fingerprint_of(value)
                if fingerprint is not None:
                    row["dns_fingerprint"] = fingerprint.name
                    self.fingerprint_matches.append((row, fingerprint))
            if ip:
                if not row["dns_bogon"]:
                    row["dns_bogon"] = is_bogon(value)
                if hostname:
                    ip_to_host.setdefault(value, hostname)

    def _endpoint(self, tid: int | None, ip: str | None, port: int | None, hostname: str | None, tags: Any) -> Row:
        key = (tid, ip, port)
        row = self.by_tid_addr.get(key)
        if row is None:
            row = self._new_row(hostname or (self.ip_to_host.get(ip) if ip else None), ip, port, tags)
            row["transaction_id"] = tid
            self.by_tid_addr[key] = row
            self.endpoint_rows.append(row)
        return row

    def add_tcp(self, tcp_connect: Any) -> None:
        entries = tcp_connect.values() if isinstance(tcp_connect, dict) else as_list(tcp_connect)
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            ip = entry.get("ip")
            if not isinstance(ip, str):
                ip = None
            port = entry.get("port")
            if type(port) is not int:
                port = _int_or_none(port)
            status = entry.get("status")
            if not isinstance(status, dict):
                status = _NO_STATUS
            row = self._endpoint(_tid(entry), ip, port, None, entry.get("tags"))
            failure = status.get("failure")
            if failure is not None:
                failure = failure_string(failure)
            success = bool(status.get("success")) if "success" in status else failure is None
            row["tcp_success"] = success
            row["tcp_failure"] = failure
            if success:
                self.any_success = True

    def add_tls(self, handshakes: list[Any]) -> None:
        for entry in handshakes:
            if not isinstance(entry, dict):
                continue
            ip, port = split_address(entry.get("address"))
            server_name = entry.get("server_name") if isinstance(entry.get("server_name"), str) else None
            tid = _tid(entry)
            row = self.by_tid_addr.get((tid, ip, port))
            if row is None or row["tls_server_name"] is not None:
                row = self._endpoint(tid, ip, port, server_name, entry.get("tags")) if row is None else \
                    self._fresh_endpoint(tid, ip, port, server_name, entry.get("tags"))
            if row["hostname"] is None:
                row["hostname"] = server_name
            failure = failure_string(entry.get("failure"))
            row["tls_server_name"] = server_name or ""
            row["tls_failure"] = failure
            row["tls_version"] = entry.get("tls_version") if isinstance(entry.get("tls_version"), str) else None
            if failure is None:
                self.any_success = True
            if server_name:
                self.by_host.setdefault(server_name, row)

    def _fresh_endpoint(self, tid: int | None, ip: str | None, port: int | None, hostname: str | None,
                        tags: Any) -> Row:
        # Without transaction ids two handshakes to one address are two endpoints.
        row = self._new_row(hostname, ip, port, tags)
        row["transaction_id"] = tid
        self.endpoint_rows.append(row)
        return row

    def add_http(self, requests: list[Any]) -> None:
        for entry in requests:
            if not isinstance(entry, dict):
                continue
            request = _as_dict(entry.get("request"))
            url = request.get("url") if isinstance(request.get("url"), str) else None
            if url is None:
                # Old probes (2019 telegram) logged only the Host header.
                host_header = _as_dict(request.get("headers")).get("Host")
                url = f"http://{host_header}/" if isinstance(host_header, str) and host_header else "http:///"
            host = url_host(url)
            row = self._http_row(entry, url, host)
            response = _as_dict(entry.get("response"))
            failure = failure_string(entry.get("failure"))
            row["http_url"] = url
            row["http_failure"] = failure
            # Code 0 is "no response": probe-cli writes it for a failed round trip (ArchivalHTTPResponse).
            status = _int_or_none(response.get("code")) or None
            row["http_status"] = status
            body = response.get("body")
            if body is not None and type(body) is not str:
                body = maybe_binary_text(body)  # base64 bodies (df-001 MaybeBinaryData)
            row["http_body_length"] = len(body) if body is not None else None
            row["http_title"] = _title(body)
            headers = response.get("headers")
            if body or headers:  # neither: match_http has nothing to match
                fingerprint = self.fingerprints.match_http(body, headers if isinstance(headers, dict) else None)
                if fingerprint is not None:
                    row["http_fingerprint"] = fingerprint.name
                    self.fingerprint_matches.append((row, fingerprint))
            if failure is None and status:
                self.any_success = True

    def _http_row(self, entry: Mapping[str, Any], url: str | None, host: str | None) -> Row:
        tid = _tid(entry)
        ip, port = split_address(entry.get("address"))
        if tid is not None or ip is not None:
            row = self.by_tid_addr.get((tid, ip, port))
            if row is not None and row["http_url"] is None:
                return row
        if tid is None and host:
            row = self.by_host.get(host)
            if row is not None and row["http_url"] is None:
                return row
            if host and ip is None:
                # Old telegram: POST http://<dc>/ has the DC address in the URL.
                row = self._tcp_row_for_ip(host, _url_port(url))
                if row is not None:
                    return row
        row = self._new_row(host, ip, port, entry.get("tags"))
        row["transaction_id"] = tid
        self.endpoint_rows.append(row)
        return row

    def _tcp_row_for_ip(self, host: str, port: int | None) -> Row | None:
        for row in self.endpoint_rows:
            if row["ip"] == host and row["port"] == port and row["http_url"] is None and row["tls_server_name"] is None:
                return row
        return None

    def add_legacy_http_failure(self, failure: str | None) -> None:
        """Old web_connectivity (<= 0.3) kept the page fetch failure only as `http_experiment_failure`."""
        if failure is None or any(row["http_url"] is not None for row in self.endpoint_rows):
            return
        row = self._new_row(url_host(self.test_input or "") if self.test_input else None, None, None, None)
        row["http_url"] = self.test_input
        row["http_failure"] = failure
        self.endpoint_rows.append(row)

    def add_control(self, control: Mapping[str, Any], control_failure: str | None) -> None:
        """Attach the test helper's view (ts-017 `control`) to each row it can speak for."""
        dns = _as_dict(control.get("dns"))
        ctrl_dns_failure = failure_string(dns.get("failure"))
        tcp = _as_dict(control.get("tcp_connect"))
        http = _as_dict(control.get("http_request"))
        have_control = bool(control) and control_failure is None
        for row in self.dns_rows + self.endpoint_rows:
            if not have_control:
                continue
            row["ctrl_dns_failure"] = ctrl_dns_failure
            if row["ip"] is not None and row["port"] is not None:
                key = f"[{row['ip']}]:{row['port']}" if ":" in row["ip"] else f"{row['ip']}:{row['port']}"
                entry = tcp.get(key)
                if isinstance(entry, dict):
                    row["ctrl_tcp_success"] = bool(entry.get("status"))
            row["ctrl_http_failure"] = failure_string(http.get("failure"))
            row["ctrl_http_status"] = _int_or_none(http.get("status_code"))
        if have_control:
            self._mark_dns_consistency({a for a in as_list(dns.get("addrs")) if isinstance(a, str)})
            self._vouched_bogons(_as_dict(control.get("ip_info")))

    def _vouched_bogons(self, ip_info: Mapping[str, Any]) -> None:
        """An answer the test helper's `ip_info` says is no bogon where it stands is none (the flags
        of probe-cli `model.THIPInfo`, bit 2 = bogon). For OONI's helpers this agrees with
        `is_bogon`; a helper in the lab vouches for the lab's internet, which lives in reserved
        space (RFC 2544) and would otherwise read as an injector's bogon answer."""
        public = {ip for ip, info in ip_info.items()
                  if isinstance(info, dict) and isinstance(info.get("flags"), int) and not info["flags"] & _TH_BOGON}
        if not public:
            return
        for row in self.dns_rows:
            if row["dns_bogon"]:
                row["dns_bogon"] = any(is_bogon(a) and a not in public
                                       for a in row["dns_answers"] or () if _looks_like_ip(a))

    def _mark_dns_consistency(self, control_addrs: set[str]) -> None:
        """OONI's rule (ts-017): answers are consistent if they overlap the control's, or if a TLS
        handshake to one of them validated (the address serves the name, whoever resolved it)."""
        validated = {row["ip"] for row in self.endpoint_rows if row["tls_server_name"] and row["tls_failure"] is None}
        for row in self.dns_rows:
            answers = [a for a in row["dns_answers"] or () if _looks_like_ip(a)]
            if answers:
                row["dns_ctrl_consistent"] = bool(control_addrs.intersection(answers) or validated.intersection(answers))

    def add_outcomes(self, results: Any, bootstrap_failure: Any = None) -> None:
        """One row per result of a test with several (tor's targets, dnscheck's lookups), its `failure`
        as the outcome; a failed bootstrap (dnscheck resolving the resolver) is one more."""
        row = self._new_row(None, None, None, None)
        self.endpoint_rows.append(row)  # the row a verdict group needs even with no result
        first = True
        for result in [*(r for r in results if isinstance(r, dict)), *(
                [{"failure": bootstrap_failure}] if failure_string(bootstrap_failure) else [])]:
            if not first:
                row = self._new_row(None, None, None, None)
                self.endpoint_rows.append(row)
            first = False
            failure = failure_string(result.get("failure"))
            row["tunnel_failure"] = failure
            row["tunnel_bootstrap_s"] = 0.0 if failure is None else None
            if failure is None:
                self.any_success = True

    def add_ech(self, test_keys: Mapping[str, Any]) -> None:
        """echcheck (ts-039): TLS handshakes with an ECH extension (the target) next to one without
        (the control, kept as an `is_control` row), to the same address. The wire SNI of an ECH
        handshake is its `outer_server_name` when the probe wrote one (`tls_server_name`)."""
        for entry, control in ech_handshakes(test_keys):
            ip, port = split_address(entry.get("address"))
            server_name = entry.get("server_name") if isinstance(entry.get("server_name"), str) else None
            outer = entry.get("outer_server_name")
            row = self._new_row(server_name, ip, port, None)
            row["is_control"] = control
            row["tls_server_name"] = (outer if isinstance(outer, str) and outer and not control else server_name) or ""
            row["tls_failure"] = failure_string(entry.get("failure"))
            row["tls_version"] = entry.get("tls_version") if isinstance(entry.get("tls_version"), str) else None
            if row["tls_failure"] is None:
                self.any_success = True
            self.endpoint_rows.append(row)

    def add_tunnel(self, test_keys: Mapping[str, Any]) -> None:
        row = self._new_row(None, None, None, None)
        failure = failure_string(test_keys.get("failure"))
        if failure is None and test_keys.get("success") is False:
            failure = failure_string(test_keys.get("error")) or "unknown_failure"
        row["tunnel_failure"] = failure
        bootstrap = test_keys.get("bootstrap_time")
        row["tunnel_bootstrap_s"] = float(bootstrap) if isinstance(bootstrap, (int, float)) else None
        if failure is None and test_keys.get("success") is not False:
            self.any_success = True
        self.endpoint_rows.append(row)


def ech_handshakes(test_keys: Mapping[str, Any]) -> list[tuple[Mapping[str, Any], bool]]:
    """echcheck's handshakes as (entry, is_control), in either of its formats [ooni-ts039]:
    before 0.2.0 one `control` and one `target` handshake; since 0.2.0 a `tls_handshakes` list
    (df-006) where the control is the one whose `echconfig` is empty and every other one tried ECH
    (probe-cli writes the ECH config list, base64, there; the spec adds a second ECH handshake
    with another outer name)."""
    if isinstance(test_keys.get("control"), dict) or isinstance(test_keys.get("target"), dict):
        return [(entry, name == "control") for name in ("control", "target")
                if isinstance(entry := test_keys.get(name), dict)]
    return [(entry, not entry.get("echconfig")) for entry in as_list(test_keys.get("tls_handshakes"))
            if isinstance(entry, dict)]


@lru_cache(maxsize=65536)
def _url_port(url: str | None) -> int | None:
    if not url:
        return None
    try:
        parts = urlsplit(url)
        return parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None


def iter_feature_groups(rows: list[Row]) -> Iterator[tuple[tuple[str, str, str | None], list[Row]]]:
    """Rows grouped by (service, feature, target), in first-seen order."""
    groups: dict[tuple[str, str, str | None], list[Row]] = {}
    for row in rows:
        groups.setdefault((row["service"], row["feature"], row["target"]), []).append(row)
    yield from groups.items()


def fingerprint_matches(test_keys: Mapping[str, Any], fingerprints: FingerprintDB) -> list[FingerprintMatch]:
    """Every fingerprint row any DNS answer or HTTP response of a measurement matches (for
    `wallwatch fingerprints check`; observations keep only the row each answer is named by)."""
    found: list[FingerprintMatch] = []
    for query in as_list(test_keys.get("queries")):
        if not isinstance(query, dict):
            continue
        for answer in as_list(query.get("answers")):
            if not isinstance(answer, dict):
                continue
            value = answer.get("ipv4") or answer.get("ipv6") or answer.get("hostname")
            row = fingerprints.match_dns(value) if isinstance(value, str) else None
            if row is not None:
                found.append(FingerprintMatch(row, "dns", query.get("hostname")))
    for entry in as_list(test_keys.get("requests")):
        if not isinstance(entry, dict):
            continue
        request, response = _as_dict(entry.get("request")), _as_dict(entry.get("response"))
        headers = response.get("headers")
        found.extend(fingerprints.match_http_all(maybe_binary_text(response.get("body")),
                                                 headers if isinstance(headers, dict) else None,
                                                 request.get("url") if isinstance(request.get("url"), str) else None))
    return found
