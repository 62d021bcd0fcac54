"""OONI's own conclusions for a web_connectivity measurement: the classic (v0.4) keys, from the facts.

`classic_keys(facts, control)` computes `dns_consistency`, `body_length_match`,
`body_proportion`, `status_code_match`, `headers_match`, `title_match`,
`blocking` and `accessible` as probe-cli's "classic" analysis engine does
([ooni-probe-cli] `webconnectivitylte/analysisclassic.go` and
`analysishttpdiff.go`; [ooni-spec] ts-017): walk the stages from the deepest
that was reached (HTTP, TLS, TCP, DNS), compare each with the control's view
of the same stage, and name the first where the probe failed and the control
did not (`dns`, `tcp_ip`, `http-failure`, `http-diff`); a failure the control
shares is a site that is down (`blocking: false, accessible: false`); any
conclusion is `dns` when the probe's DNS answers were inconsistent with the
control's. These keys are what OONI's tools read; wallwatch's own verdict comes
from the pipeline's rule set (`analysis/verdicts/rulesets/web_connectivity.yaml`),
which reads the same facts.

A pure function of recorded facts, so it is unit-tested without a network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit

from wallwatch.protocols import webconnectivity as th

DNS, TCP_IP, HTTP_FAILURE, HTTP_DIFF = "dns", "tcp_ip", "http-failure", "http-diff"
BLOCKING_TYPES = (DNS, TCP_IP, HTTP_FAILURE, HTTP_DIFF)

# analysishttpdiff.go: bodies within this proportion of each other "match".
BODY_PROPORTION_FACTOR = 0.7
# Title words shorter than this are not compared (5: the average English word length, ibid.).
MIN_TITLE_WORD = 5
# Headers every server sends, left out of the comparison (analysishttpdiff.go `commonHeaders`).
COMMON_HEADERS = frozenset({
    "date", "content-type", "server", "cache-control", "vary", "set-cookie", "location", "expires",
    "x-powered-by", "content-encoding", "last-modified", "accept-ranges", "pragma", "x-frame-options", "etag",
    "x-content-type-options", "age", "via", "p3p", "x-xss-protection", "content-language", "cf-ray",
    "strict-transport-security", "link", "x-varnish",
})


@dataclass(frozen=True)
class ProbeResponse:
    """The probe's final HTTP response, as recorded."""

    status: int
    headers: Mapping[str, str]
    body: str
    body_is_truncated: bool = False


@dataclass(frozen=True)
class Facts:
    """What the probe saw of one URL, stage by stage (None: the stage was not reached)."""

    url: str
    dns_failure: str | None
    addresses: tuple[str, ...]
    # ip:port -> failure (None: connected), for every endpoint dialled.
    tcp: Mapping[str, str | None] = field(default_factory=dict)
    # ip:port -> failure (None: handshake done), for https.
    tls: Mapping[str, str | None] = field(default_factory=dict)
    http_failure: str | None = None
    http_attempted: bool = False
    response: ProbeResponse | None = None


def dns_consistency(facts: Facts, control: Mapping[str, Any] | None) -> str | None:
    """ "consistent", "inconsistent", or None (no control).

    Consistent: an address both resolved, or one that served the name over TLS
    (to the probe, or to the helper: ip_info's valid-for-domain flag), or both
    lookups failed (an expected failure). Inconsistent: the probe's answers
    share nothing with the control's, or only the probe's lookup failed, or the
    probe resolved what the control could not (analysisclassic.go
    `analysisClassicDNSConsistency`; no ASN comparison: no ASN database here).
    """
    if not control:
        return None
    if th.is_ip_literal(urlsplit(facts.url).hostname or ""):
        return "consistent"  # nothing was resolved (ts-017: an IP in the URL is consistent)
    dns = control.get("dns") or {}
    control_addrs = {a for a in dns.get("addrs") or () if isinstance(a, str)}
    control_failed = dns.get("failure") is not None or not control_addrs
    if facts.dns_failure is not None or not facts.addresses:
        return "consistent" if control_failed else "inconsistent"
    valid = {ep.rpartition(":")[0].strip("[]") for ep, failure in facts.tls.items() if failure is None}
    for ip, info in (control.get("ip_info") or {}).items():
        if isinstance(info, dict) and int(info.get("flags") or 0) & th.FLAG_VALID_FOR_DOMAIN:
            valid.add(ip)
    resolved = set(facts.addresses)
    return "consistent" if resolved & (control_addrs | valid) else "inconsistent"


@dataclass
class HttpDiff:
    body_proportion: float | None = None
    body_length_match: bool | None = None
    status_code_match: bool | None = None
    headers_match: bool | None = None
    title_match: bool | None = None

    def differs(self) -> bool:
        """analysishttpdiff.go: the same status and one of body length, uncommon headers or title."""
        if self.status_code_match:
            if self.body_length_match or self.headers_match or self.title_match:
                return False
        return True


def http_diff(response: ProbeResponse, control_http: Mapping[str, Any]) -> HttpDiff:
    """Compare the probe's final response with the control's (both successful)."""
    diff = HttpDiff()
    control_length = int(control_http.get("body_length") or 0)
    measured = len(response.body.encode("utf-8"))
    if control_length > 0 and measured > 0 and not response.body_is_truncated:
        diff.body_proportion = min(control_length, measured) / max(control_length, measured)
        diff.body_length_match = diff.body_proportion > BODY_PROPORTION_FACTOR
    control_status = int(control_http.get("status_code") or 0)
    if control_status > 0 and response.status > 0:
        same = control_status == response.status
        # A helper that got an error page is no yardstick for a different status (ibid.).
        if same or control_status // 100 == 2:
            diff.status_code_match = same
    diff.headers_match = _headers_match(response.headers, control_http.get("headers") or {})
    title = th.page_title(response.body)
    control_title = str(control_http.get("title") or "")
    if title and control_title and control_status > 0 and not response.body_is_truncated:
        diff.title_match = _title_words(title) == _title_words(control_title)
    return diff


def _headers_match(ours: Mapping[str, str], theirs: Mapping[str, Any]) -> bool | None:
    """The same header names, or at least one uncommon header in both."""
    if not ours or not theirs:
        return None
    mine = {name.lower() for name in ours}
    other = {str(name).lower() for name in theirs}
    if mine == other:
        return True
    return bool((mine - COMMON_HEADERS) & (other - COMMON_HEADERS))


def _title_words(title: str) -> set[str]:
    return {word.lower() for word in title.split(" ") if len(word) >= MIN_TITLE_WORD}


@dataclass
class Conclusion:
    """The classic keys (None stays null in JSON)."""

    dns_consistency: str | None
    blocking: str | bool | None
    accessible: bool | None
    http_experiment_failure: str | None
    diff: HttpDiff

    def keys(self) -> dict[str, Any]:
        return {"dns_consistency": self.dns_consistency, "blocking": self.blocking, "accessible": self.accessible,
                "http_experiment_failure": self.http_experiment_failure,
                "body_proportion": self.diff.body_proportion or 0.0, "body_length_match": self.diff.body_length_match,
                "status_code_match": self.diff.status_code_match, "headers_match": self.diff.headers_match,
                "title_match": self.diff.title_match}


def _first_failure(results: Mapping[str, str | None]) -> tuple[str, str] | None:
    failed = [(endpoint, failure) for endpoint, failure in results.items() if failure is not None]
    return failed[0] if failed and len(failed) == len(results) else None


def classic_keys(facts: Facts, control: Mapping[str, Any] | None) -> Conclusion:
    """analysisclassic.go `analysisClassicComputeBlockingAccessible`, for one redirect depth."""
    consistency = dns_consistency(facts, control)
    result = Conclusion(consistency, None, None, None, HttpDiff())
    ctrl = control or {}
    ctrl_http: Mapping[str, Any] | None = ctrl.get("http_request") if control else None

    def blocked(kind: str, failure: str | None) -> Conclusion:
        result.blocking = DNS if consistency == "inconsistent" else kind
        result.accessible = False
        result.http_experiment_failure = failure
        return result

    def down(failure: str | None) -> Conclusion:
        result.blocking, result.accessible = (DNS, False) if consistency == "inconsistent" else (False, False)
        result.http_experiment_failure = failure
        return result

    def unknown(failure: str | None) -> Conclusion:
        result.blocking, result.accessible = (DNS, False) if consistency == "inconsistent" else (None, None)
        result.http_experiment_failure = failure
        return result

    # 1. A final response.
    if facts.response is not None:
        if urlsplit(facts.url).scheme == "https":
            result.blocking, result.accessible = False, True  # TLS to the name vouches for the page
            if ctrl_http is not None and ctrl_http.get("failure") is None:
                result.diff = http_diff(facts.response, ctrl_http)
            return result
        if ctrl_http is None:
            return unknown(None)
        if ctrl_http.get("failure") is not None:
            # The helper could not fetch it: nothing to compare with (ts-017: status codes of -1).
            return unknown(None)
        result.diff = http_diff(facts.response, ctrl_http)
        if not result.diff.differs():
            result.blocking, result.accessible = False, True
            return result
        return blocked(HTTP_DIFF, None)
    # 2. A failed HTTP round trip.
    if facts.http_attempted and facts.http_failure is not None:
        if ctrl_http is None:
            return unknown(facts.http_failure)
        if ctrl_http.get("failure") is not None:
            return down(facts.http_failure)
        return blocked(HTTP_FAILURE, facts.http_failure)
    # 3. Every TLS handshake failed.
    tls_failed = _first_failure(facts.tls)
    if tls_failed is not None:
        endpoint, failure = tls_failed
        ctrl_tls = (ctrl.get("tls_handshake") or {}).get(endpoint)
        if ctrl_tls is None:
            return unknown(failure) if ctrl_http is None else blocked(HTTP_FAILURE, failure)
        if ctrl_tls.get("failure") is not None:
            return down(failure)
        return blocked(HTTP_FAILURE, failure)
    # 4. Every TCP connect failed.
    tcp_failed = _first_failure(facts.tcp)
    if tcp_failed is not None:
        endpoint, failure = tcp_failed
        ctrl_tcp = (ctrl.get("tcp_connect") or {}).get(endpoint)
        if ctrl_tcp is None:
            return unknown(failure) if ctrl_http is None else blocked(HTTP_FAILURE, failure)
        if ctrl_tcp.get("failure") is not None or not ctrl_tcp.get("status"):
            return down(failure)
        return blocked(TCP_IP, failure)
    # 5. The lookup failed.
    if facts.dns_failure is not None:
        ctrl_dns = ctrl.get("dns") if control else None
        if ctrl_dns is None:
            result.blocking, result.accessible = (False, None) if ctrl_http is None else (DNS, False)
            result.http_experiment_failure = facts.dns_failure
            return result
        if ctrl_dns.get("failure") is not None:
            return down(facts.dns_failure)
        return blocked(DNS, facts.dns_failure)
    # 6. Resolved, but no endpoint was dialled (wallwatch in the lab never dials an address off the
    #    lab's map, e.g. a real injector's answer): only the DNS comparison can speak.
    return unknown(None) if consistency != "inconsistent" else blocked(DNS, None)


def tcp_blocked(endpoint_failure: str | None, control: Mapping[str, Any] | None, endpoint: str) -> bool:
    """ts-017's per-connect `blocked` flag: the probe failed to connect where the helper did not."""
    if endpoint_failure is None or not control:
        return False
    entry = (control.get("tcp_connect") or {}).get(endpoint)
    return bool(isinstance(entry, dict) and entry.get("status"))


def endpoints_for(addresses: Sequence[str], url: str) -> list[tuple[str, int]]:
    """The URL's port on every address (classic: 80 for http, 443 for https, or the explicit port)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return [(ip, port) for ip in addresses]
