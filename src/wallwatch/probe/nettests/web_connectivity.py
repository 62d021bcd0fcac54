"""The `web_connectivity` nettest: is a web page reachable, and if not, at which stage was it stopped?

For each input URL, as OONI's Web Connectivity does ([ooni-spec] ts-017, the
"classic" algorithm; probe-cli's `webconnectivitylte`, [ooni-probe-cli]):

1. resolve the URL's host (the lab's resolver over UDP, so a racing injected
   answer is seen; else the system resolver);
2. at once: ask the test helper (`wallwatch helper serve`, outside the censor)
   for its view of the URL and of the addresses resolved, and connect to every
   address on the URL's port, with a TLS handshake naming the host for https;
3. GET the page over the first connection that got through;
4. compare with the control and write OONI's keys: the event arrays
   (`queries`, `tcp_connect` with ts-017's `blocked` flag, `tls_handshakes`,
   `requests`, `network_events`), `control`, `control_failure`,
   `dns_experiment_failure`, `http_experiment_failure`, `dns_consistency`,
   `body_length_match`, `body_proportion`, `status_code_match`,
   `headers_match`, `title_match`, `blocking`, `accessible` (webdiff.py).

One measurement per URL (`input` = the URL), as OONI writes them; the URLs of
one run are measured concurrently, at most `parallelism` at a time. The
measurement carries no `x_wallwatch.features`: the pipeline judges it with its
web_connectivity rule set, exactly as it judges OONI's own measurements.

The helper's traffic is not recorded in the measurement (OONI records only the
control's answer): a separate trace holds it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any, Callable, Sequence
from urllib.parse import urlsplit

from wallwatch.probe import failures
from wallwatch.probe.failures import ProbeFailure
from wallwatch.probe.nettests import TargetError
from wallwatch.probe.nettests.webdiff import Facts, ProbeResponse, classic_keys, endpoints_for, tcp_blocked
from wallwatch.probe.primitives import (
    Resolution,
    TcpStream,
    TlsStream,
    http_request,
    resolve_system,
    resolve_udp,
    tcp_connect,
    tls_handshake,
)
from wallwatch.probe.settings import ProbeSettings
from wallwatch.probe.trace import Trace, Transaction
from wallwatch.protocols import webconnectivity as th
from wallwatch.protocols.errors import ProtocolError

if TYPE_CHECKING:
    from wallwatch.probe.measurement import Stamp

TEST_NAME = "web_connectivity"
# The keys are v0.4's ("classic"): no extensions, no depth/fetch_body tags (ts-017).
TEST_VERSION = "0.4.3"
# OONI's request headers (ts-017 example control request).
REQUEST_HEADERS: tuple[tuple[str, str], ...] = (
    ("Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    ("Accept-Language", "en-US;q=0.8,en;q=0.5"),
    ("User-Agent", "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
                   "Chrome/88.0.4324.150 Safari/537.36"),
)
# Bodies are kept whole up to this size: the page comparison needs the length and the title,
# a fingerprint the body (OONI keeps up to 1 MiB, [ooni-data] Readme).
BODY_BYTES = 256 * 1024
DEFAULT_LIST = "cn-2017"  # lists/cn-2017.txt: sites blocked in China by 2017
DEFAULT_PARALLELISM = 8
MAX_PARALLELISM = 64


@dataclass(frozen=True)
class Timeouts:
    """Per-step bounds, in seconds; `control` is how long the helper may take (it runs every step itself)."""

    dns: float = 2.0
    dns_linger: float = 0.3  # an injector races the resolver: wait this long for a second answer
    connect: float = 3.0
    tls: float = 3.0
    http: float = 6.0
    control: float = 20.0

    @classmethod
    def scaled(cls, step: float) -> "Timeouts":
        return cls(dns=min(2.0, step), connect=step, tls=step, http=2 * step, control=6 * step)


@dataclass(frozen=True)
class WebConfig:
    helper_url: str | None
    parallelism: int = DEFAULT_PARALLELISM
    timeouts: Timeouts = field(default_factory=Timeouts)


def read_list(text: str) -> list[str]:
    """OONI's input-file format: one URL a line; blank lines and `#` comments are skipped."""
    urls = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        check_url(line, f"line {number}")
        urls.append(line)
    return urls


def check_url(url: str, where: str = "input") -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise TargetError(f"{where}: {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetError(f"{where}: {url!r} is not an http:// or https:// URL")


def shipped_list(name: str = DEFAULT_LIST) -> list[str]:
    text = resources.files("wallwatch.probe.nettests").joinpath("lists", f"{name}.txt").read_text(encoding="utf-8")
    return read_list(text)


# --- one URL -------------------------------------------------------------------------


class UrlTest:
    """One URL's measurement: its own trace, the facts, the control."""

    def __init__(self, url: str, config: WebConfig, settings: ProbeSettings) -> None:
        self.url, self.config, self.settings = url, config, settings
        self.parts = urlsplit(url)
        self.host = self.parts.hostname or ""
        self.trace = Trace()
        self.tcp: dict[str, str | None] = {}
        self.tls: dict[str, str | None] = {}
        self.dialled: dict[str, str] = {}  # endpoint dialled -> endpoint resolved (they differ only when mapped)
        self.control: dict[str, Any] | None = None
        self.control_failure: str | None = None

    async def run(self) -> dict[str, Any]:
        t = self.config.timeouts
        addresses: tuple[str, ...] = (self.host,) if th.is_ip_literal(self.host) else ()
        dns_failure: str | None = None
        if not addresses:
            resolution = await self._resolve(self.trace.transaction(), self.host)
            dns_failure, addresses = resolution.failure, resolution.addresses
        endpoints = endpoints_for(addresses, self.url)
        control = asyncio.ensure_future(self._ask_helper([th.join_endpoint(ip, port) for ip, port in endpoints]))
        streams = await asyncio.gather(*(self._connect(ip, port) for ip, port in endpoints))
        chosen = next((s for s in streams if s is not None), None)
        response, http_failure, attempted = None, None, False
        try:
            if chosen is not None:
                attempted = True
                try:
                    reply = await http_request(chosen, self.url, headers=REQUEST_HEADERS, timeout=t.http,
                                               snapshot_bytes=BODY_BYTES)
                except ProbeFailure as exc:
                    http_failure = exc.failure
                else:
                    body = reply.body[:BODY_BYTES]
                    response = ProbeResponse(reply.status, dict(reply.headers), body.decode("utf-8", "replace"),
                                             len(reply.body) > BODY_BYTES)
        finally:
            for stream in streams:
                if stream is not None:
                    await stream.close()
        await control
        facts = Facts(self.url, dns_failure, tuple(addresses), self.tcp, self.tls, http_failure, attempted, response)
        return self.test_keys(facts)

    async def _resolve(self, tx: Transaction, host: str) -> Resolution:
        t = self.config.timeouts
        if self.settings.resolver is None:
            return await resolve_system(tx, host, timeout=max(t.dns, 5.0))
        return await resolve_udp(tx, host, self.settings.resolver, timeout=t.dns, linger=t.dns_linger)

    async def _connect(self, ip: str, port: int) -> TcpStream | TlsStream | None:
        """Connect (and for https, handshake) to one endpoint; the stream when it got through."""
        t = self.config.timeouts
        endpoint = th.join_endpoint(ip, port)
        try:
            dial = self.settings.map_address(ip)
        except (KeyError, ValueError):
            return None  # off the lab's map: never dialled (the analysis reads the DNS answer alone)
        tx = self.trace.transaction(f"endpoint:{endpoint}")
        self.dialled[th.join_endpoint(dial, port)] = endpoint
        try:
            stream = await tcp_connect(tx, dial, port, timeout=t.connect)
        except ProbeFailure as exc:
            self.tcp[endpoint] = exc.failure
            return None
        self.tcp[endpoint] = None
        if self.parts.scheme != "https":
            return stream
        try:
            tls = await tls_handshake(stream, self.host, self.settings.tls_context(("http/1.1",)),
                                      alpn=("http/1.1",), timeout=t.tls)
        except ProbeFailure as exc:
            self.tls[endpoint] = exc.failure
            await stream.close()
            return None
        self.tls[endpoint] = None
        return tls

    async def _ask_helper(self, endpoints: Sequence[str]) -> None:
        """POST the control request; its answer (or why there is none) becomes `control`/`control_failure`."""
        if not self.config.helper_url:
            self.control_failure = failures.unknown_failure("no test helper configured")
            return
        request = th.ControlRequest(self.url, {name: (value,) for name, value in REQUEST_HEADERS}, tuple(endpoints))
        try:
            body = await asyncio.wait_for(call_helper(self.config.helper_url, request.encode(), self.settings,
                                                      self.config.timeouts), self.config.timeouts.control)
            self.control = th.parse_response(body)
        except ProbeFailure as exc:
            self.control_failure = exc.failure
        except (asyncio.TimeoutError, TimeoutError):
            self.control_failure = failures.GENERIC_TIMEOUT
        except ProtocolError as exc:
            self.control_failure = failures.unknown_failure(f"test helper: {exc}")

    def test_keys(self, facts: Facts) -> dict[str, Any]:
        conclusion = classic_keys(facts, self.control)
        for entry in self.trace.tcp_connect:
            dialled = th.join_endpoint(entry["ip"], entry["port"])
            entry["status"]["blocked"] = tcp_blocked(entry["status"]["failure"], self.control,
                                                     self.dialled.get(dialled, dialled))
        lab = self.settings.lab
        keys: dict[str, Any] = {
            "agent": "redirect", "client_resolver": None, "retries": None, "socksproxy": None,
            **self.trace.event_arrays(),
            "dns_experiment_failure": facts.dns_failure,
            "control_failure": self.control_failure,
            "control": self.control or {},
            **conclusion.keys(),
            "x_wallwatch": {"helper": self.config.helper_url,
                            "lab": {"run_id": lab.run_id, "resolver": lab.resolver} if lab else None},
        }
        # df-001: the newest request first (one request here: no redirects are followed).
        keys["requests"] = list(reversed(keys["requests"]))
        return keys


# --- the helper call ------------------------------------------------------------------


async def call_helper(helper_url: str, body: bytes, settings: ProbeSettings, timeouts: Timeouts) -> bytes:
    """POST to the helper with the probe's own primitives, on a trace of its own (not recorded)."""
    parts = urlsplit(helper_url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    trace = Trace()
    tx = trace.transaction()
    if th.is_ip_literal(host):
        addresses: tuple[str, ...] = (host,)
    else:
        resolution = (await resolve_system(tx, host, timeout=5.0) if settings.resolver is None
                      else await resolve_udp(tx, host, settings.resolver, timeout=timeouts.dns, linger=0.0))
        if resolution.failure:
            raise ProbeFailure(resolution.failure)
        addresses = resolution.addresses
    try:
        dial = settings.map_address(addresses[0])
    except (KeyError, ValueError):
        raise ProbeFailure(failures.unknown_failure(f"no lab address for the helper's {addresses[0]}")) from None
    stream = await tcp_connect(tx, dial, port, timeout=timeouts.connect)
    try:
        channel: TcpStream | TlsStream = stream
        if parts.scheme == "https":
            channel = await tls_handshake(stream, host, settings.tls_context(("http/1.1",)), alpn=("http/1.1",),
                                          timeout=timeouts.tls)
        reply = await http_request(channel, helper_url, method="POST", body=body,
                                   headers=(("Content-Type", "application/json"),), timeout=timeouts.control,
                                   snapshot_bytes=0)
    finally:
        await stream.close()
    if reply.status != 200:
        raise ProbeFailure(failures.unknown_failure(f"test helper answered HTTP {reply.status}"))
    return reply.body


# --- the run ---------------------------------------------------------------------------


def default_config(settings: ProbeSettings, *, step_timeout: float | None = None,
                   options: dict[str, str] | None = None) -> WebConfig:
    options = dict(options or {})
    unknown = set(options) - {"helper", "parallelism"}
    if unknown:
        raise ValueError(f"web_connectivity takes the options helper=URL and parallelism=N, not {sorted(unknown)}")
    helper = options.get("helper") or (settings.lab.test_helpers.get(TEST_NAME) if settings.lab else None)
    if helper:
        check_url(helper, "helper")
    try:
        parallelism = int(options.get("parallelism", DEFAULT_PARALLELISM))
    except ValueError:
        raise ValueError(f"parallelism={options['parallelism']!r} is not a number") from None
    if not 1 <= parallelism <= MAX_PARALLELISM:
        raise ValueError(f"parallelism must be within 1..{MAX_PARALLELISM}")
    timeouts = Timeouts.scaled(step_timeout) if step_timeout is not None else Timeouts()
    return WebConfig(helper_url=helper, parallelism=parallelism, timeouts=timeouts)


async def measure_urls(urls: Sequence[str], config: WebConfig, settings: ProbeSettings,
                       on_done: Callable[[str, dict[str, Any], dt.datetime, float], None]) -> None:
    """Measure every URL, at most `config.parallelism` at once; `on_done(url, test_keys, start, runtime)`."""
    slots = asyncio.Semaphore(config.parallelism)

    async def one(url: str) -> None:
        async with slots:
            started_at, clock = dt.datetime.now(dt.timezone.utc), time.monotonic()
            keys = await UrlTest(url, config, settings).run()
            on_done(url, keys, started_at, time.monotonic() - clock)

    await asyncio.gather(*(one(url) for url in urls))


def run_inputs(settings: ProbeSettings, stamp: "Stamp", *, step_timeout: float | None = None,
               targets: Sequence[str] = (), progress: Callable[[str], None] | None = None,
               options: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One measurement per URL (the targets, else the shipped 2017 list), in the targets' order."""
    from wallwatch.probe.measurement import finish_measurement

    for url in targets:
        check_url(url, "--target")
    urls = list(targets) or shipped_list()
    config = default_config(settings, step_timeout=step_timeout, options=options)
    say = progress or (lambda message: None)
    done: dict[str, dict[str, Any]] = {}

    def finish(url: str, keys: dict[str, Any], started_at: dt.datetime, runtime: float) -> None:
        measurement = finish_measurement(keys, test_name=TEST_NAME, test_version=TEST_VERSION,
                                         started_at=started_at, runtime=runtime, stamp=stamp,
                                         resolver_ip=settings.resolver_ip(), probe_addresses=set(), input=url)
        if config.helper_url:
            measurement["test_helpers"] = {"backend": {"address": config.helper_url, "type": "https"}}
        done[url] = measurement
        say(f"{len(done)}/{len(urls)} measured")

    say(f"measuring {len(urls)} URLs, {config.parallelism} at a time")
    asyncio.run(measure_urls(list(dict.fromkeys(urls)), config, settings, finish))
    return [done[url] for url in dict.fromkeys(urls)]


def run_once(settings: ProbeSettings, stamp: "Stamp", *, step_timeout: float | None = None,
             targets: Sequence[str] = (), progress: Callable[[str], None] | None = None,
             options: dict[str, str] | None = None) -> dict[str, Any]:
    """The first URL's measurement (the registry's single-measurement form)."""
    return run_inputs(settings, stamp, step_timeout=step_timeout, targets=targets[:1] or shipped_list()[:1],
                      progress=progress, options=options)[0]
