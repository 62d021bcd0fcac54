"""The `whatsapp` nettest: every WhatsApp feature, measured at the protocol it uses.

OONI's ts-018 only TCP-connects to the chat endpoints and fetches two HTTPS
URLs, so it cannot see a censor that lets the connection through and kills
the chat protocol (China, 2017: text worked while media failed, then the
Noise stream itself was blocked; [SCMP2017], [NYT2017]). Here each feature speaks
its own protocol:

* text: `e1`..`e16.whatsapp.net` on 443 and 5222 (OONI's 32 targets), the real
  chat transport (WA header + Noise XX + one echoed message); when a target
  fails after connecting, a same-size non-WhatsApp control to the same
  address:port tells protocol fingerprinting from an address block;
* media: HTTPS upload and download of a photo-sized object on mmg.whatsapp.net;
* calls: a STUN Binding request (RFC 5389) to the call relays;
* web: `GET https://web.whatsapp.com/`; registration: `GET https://v.whatsapp.net/v2/register`.

HTTPS failures after the ClientHello get an SNI control (same address:port,
a different server name). After the reachability attempts, media, web and
calls that got through are timed against a control on the same path
(`base.Throughput`, probe/throughput.py): a slowed feature reads `throttled`. All attempts run concurrently with bounded
timeouts. The OONI keys are filled exactly as probe-cli's whatsapp 0.11.0
does, so OONI tooling reads the measurement; wallwatch's own facts and
verdicts go under `x_wallwatch`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Sequence

from wallwatch.probe import failures
from wallwatch.probe.failures import ProbeFailure
from wallwatch.probe.nettests.base import (
    CONTROL_FILLER,  # noqa: F401 - re-exported: part of this module's documented surface
    PHOTO_SIZE,
    STUN_PORT,
    Common,
    Reached,
    ServiceTest,
    Throughput,
    Timeouts,
    lab_networks,
    measure,
)
from wallwatch.probe.settings import ProbeSettings
from wallwatch.probe.trace import Trace
from wallwatch.vocabulary import NETTEST_FEATURES

if TYPE_CHECKING:
    from wallwatch.probe.measurement import Stamp

__all__ = ["WhatsAppConfig", "WhatsAppTest", "Timeouts", "default_config", "measure_whatsapp", "run_whatsapp"]

TEST_NAME = "whatsapp"
TEST_VERSION = "0.1.0"
# The OONI test whose keys this measurement also carries (probe-cli whatsapp.go).
OONI_TEST_VERSION = "0.11.0"

FEATURES: tuple[str, ...] = tuple(map(str, NETTEST_FEATURES[TEST_NAME]))
TEXT, MEDIA, CALLS, WEB, REGISTRATION = FEATURES

# Chat session stages, in order: how far a text attempt got.
STAGES = ("dns", "connect", "header_sent", "handshake", "echo")
CHAT_STAGES = STAGES[2:]

# AS32934 (Meta) blocks that WhatsApp's services and relays answer from
# (RIPEstat announced prefixes), plus the AWS Global Accelerator blocks the
# chat edges resolved to in OONI's own ts-018 example (3.33.x, 15.197.x).
# An answer outside these is a hint, never proof: a verdict also needs the
# flow to that address to fail.
WHATSAPP_NETWORKS = (
    "31.13.24.0/21", "31.13.64.0/18", "57.144.0.0/14", "66.220.144.0/20", "69.63.176.0/20",
    "69.171.224.0/19", "102.132.96.0/20", "129.134.0.0/16", "157.240.0.0/16", "163.70.128.0/17",
    "173.252.64.0/18", "179.60.192.0/22", "185.60.216.0/22", "204.15.20.0/22",
    "3.33.0.0/16", "15.197.0.0/16", "2a03:2880::/32",
)

# Real-world call relays: Meta address space, where WhatsApp's relays live;
# the lab maps these blocks onto its relays (the lab state file's `address_map`).
CALL_RELAYS = ("157.240.229.60", "31.13.66.51")


def _chat_hosts() -> tuple[str, ...]:
    return tuple(f"e{i}.whatsapp.net" for i in range(1, 17))


@dataclass(frozen=True)
class WhatsAppConfig:
    """What to measure. Every target, port and bound is injectable (tests point it at loopback)."""

    chat_hosts: tuple[str, ...] = field(default_factory=_chat_hosts)
    chat_ports: tuple[int, ...] = (443, 5222)
    registration_url: str = "https://v.whatsapp.net/v2/register"
    web_url: str = "https://web.whatsapp.com/"
    media_upload_url: str = "https://mmg.whatsapp.net/upload"
    media_download_url: str = "https://mmg.whatsapp.net/d/sample.jpg"
    media_upload_size: int = PHOTO_SIZE
    https_port: int | None = None  # None: the URL's port (443)
    call_relays: tuple[str, ...] = CALL_RELAYS
    stun_port: int = STUN_PORT
    control_sni: str = "example.org"  # RFC 2606 reserved name: no censor lists it
    # Throughput against a control (probe/throughput.py): a ranged download of a
    # bulk object per HTTPS feature, STUN round trips against TCP connects for calls.
    throughput: bool = True
    media_bulk_url: str = "https://mmg.whatsapp.net/d/video.mp4"
    web_bulk_url: str = "https://web.whatsapp.com/app.js"
    throughput_rounds: int = 3
    relay_control_port: int = 443  # TCP port timed as the calls' latency control
    dns_control_name: str = "example.com"
    expected_networks: tuple[str, ...] = WHATSAPP_NETWORKS
    max_addresses: int = 2  # addresses tried per target, as a dialer falls back
    timeouts: Timeouts = field(default_factory=Timeouts)
    # The chat client's opening, era by era (protocols.whatsapp.OPENINGS): "today" sends the
    # edge-routing prefix and WA 6 3, "2022" the edge opening nDPI 4.2 knows, "2017" the bare
    # WA 1 5 header of the clients of that year.
    opening: str = "today"

    @property
    def common(self) -> Common:
        timed = Throughput(bulk=((MEDIA, self.media_bulk_url), (WEB, self.web_bulk_url)), calls=(CALLS,),
                           rounds=self.throughput_rounds, relay_control_port=self.relay_control_port)
        return Common(control_sni=self.control_sni, dns_control_name=self.dns_control_name,
                      expected_networks=self.expected_networks, max_addresses=self.max_addresses,
                      https_port=self.https_port, timeouts=self.timeouts,
                      throughput=timed if self.throughput else Throughput())


class WhatsAppTest(ServiceTest):
    test_name = TEST_NAME
    test_version = TEST_VERSION
    sessions_key = "chat_sessions"  # the measurement contract of rules/1 and /2 (probe/__init__.py)

    def __init__(self, config: WhatsAppConfig, settings: ProbeSettings, trace: Trace | None = None) -> None:
        super().__init__(config.common, settings, trace)
        self.config = config

    @property
    def chat_sessions(self) -> list[dict[str, Any]]:
        return self.sessions

    def attempts(self) -> list[Awaitable[Any]]:
        c = self.config
        jobs: list[Awaitable[Any]] = [self.session(TEXT, host, port, self._chat, CHAT_STAGES)
                                      for host in c.chat_hosts for port in c.chat_ports]
        jobs += [self.upload(MEDIA, c.media_upload_url, c.media_upload_size), self.https(MEDIA, c.media_download_url)]
        jobs += [self.https(WEB, c.web_url), self.https(REGISTRATION, c.registration_url)]
        jobs += [self.stun(CALLS, relay, c.stun_port) for relay in c.call_relays]
        return jobs

    def ooni_keys(self) -> dict[str, Any]:
        return ooni_whatsapp_keys(self.sessions, self.trace, self.fetches)

    def extra_facts(self) -> dict[str, Any]:
        """Which era's client spoke (a replay of 2017 must have sent 2017's opening)."""
        return {"opening": self.config.opening}

    async def _chat(self, stream: Any, reached: Reached, session: dict[str, Any]) -> None:
        """The chat transport: opening + Noise XX, then one message the server must echo."""
        from wallwatch.protocols.whatsapp import ChatClient, HandshakeComplete, MessageReceived, client_for

        timeout = self.config.timeouts.chat
        client: ChatClient = client_for(self.config.opening)
        client.initiate()
        first_flight = client.data_to_send()
        session["first_flight_size"] = len(first_flight)
        token = b"wallwatch echo " + os.urandom(8).hex().encode()
        await stream.write(first_flight, timeout=timeout)
        reached("header_sent")
        while True:
            data = await stream.read(timeout=timeout)
            if not data:
                raise ProbeFailure(failures.EOF_ERROR)
            for event in client.receive_data(data):
                if isinstance(event, HandshakeComplete):
                    reached("handshake")
                    client.send_message(token)
                elif isinstance(event, MessageReceived):
                    if event.plaintext != token:
                        raise ProbeFailure(failures.unknown_failure("echo does not match the message sent"))
                    reached("echo")
                    return
            outgoing = client.data_to_send()
            if outgoing:
                await stream.write(outgoing, timeout=timeout)


def ooni_whatsapp_keys(chat_sessions: Sequence[dict[str, Any]], trace: Trace,
                       fetches: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """OONI's own keys, with probe-cli whatsapp 0.11.0 semantics.

    An endpoint counts as reachable when its TCP connect succeeded (OONI does
    nothing more); a host is listed blocked when both its ports failed; the
    registration and web checks are blocked on any failure, whatever the
    HTTP status; the DNS-inconsistency list is always empty (ooni/probe-engine#341).
    """
    failed_by_host: dict[str, int] = {}
    endpoints_ok = False
    for session in chat_sessions:
        if session["stage_reached"] in ("connect", "header_sent", "handshake", "echo"):
            endpoints_ok = True
        else:
            failed_by_host[session["host"]] = failed_by_host.get(session["host"], 0) + 1
    blocked_hosts = [host for host, count in failed_by_host.items() if count >= 2]

    def url_failure(feature: str) -> str | None:
        matching = [f for f in fetches if f["feature"] == feature]
        if not matching:
            return failures.UNKNOWN_FAILURE
        return matching[0].get("failure")

    registration = url_failure(REGISTRATION)
    web = url_failure(WEB)
    return {
        "registration_server_failure": registration,
        "registration_server_status": "ok" if registration is None else "blocked",
        "whatsapp_endpoints_blocked": blocked_hosts,
        "whatsapp_endpoints_dns_inconsistent": [],
        "whatsapp_endpoints_status": "ok" if endpoints_ok else "blocked",
        "whatsapp_web_failure": web,
        "whatsapp_web_status": "ok" if web is None else "blocked",
    }


async def run_whatsapp(config: WhatsAppConfig, settings: ProbeSettings, *,
                       trace: Trace | None = None,
                       progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the nettest; returns `test_keys` (wrap with `probe.measurement.build_measurement`)."""
    return await WhatsAppTest(config, settings, trace).run(progress)


def config_with_timeout(config: WhatsAppConfig, step: float | None) -> WhatsAppConfig:
    return config if step is None else replace(config, timeouts=Timeouts.scaled(step))


def default_config(settings: ProbeSettings, *, step_timeout: float | None = None) -> WhatsAppConfig:
    """The real-world targets; in the lab, the lab's service addresses also count as the service's own."""
    config = WhatsAppConfig()
    config = replace(config, expected_networks=config.expected_networks + lab_networks(settings))
    return config_with_timeout(config, step_timeout)


def measure_whatsapp(
    config: WhatsAppConfig,
    settings: ProbeSettings,
    *,
    probe_asn: str = "AS0",
    probe_cc: str = "ZZ",
    publish_ip: bool = False,
    progress: Callable[[str], None] | None = None,
    stamp: "Stamp | None" = None,
) -> dict[str, Any]:
    """Run the nettest and wrap it in the OONI envelope: one complete measurement.

    `stamp` (probe.measurement.Stamp) carries every envelope option; without
    it, `probe_asn`/`probe_cc`/`publish_ip` are used as given.
    """
    from wallwatch.probe.measurement import Stamp

    stamp = stamp or Stamp(probe_asn=probe_asn, probe_cc=probe_cc, publish_ip=publish_ip)
    return measure(WhatsAppTest(config, settings), stamp, progress)


def run_once(settings: ProbeSettings, stamp: "Stamp", *, step_timeout: float | None = None,
             targets: Sequence[str] = (), progress: Callable[[str], None] | None = None,
             options: dict[str, str] | None = None) -> dict[str, Any]:
    """The registry's entry point (the targets are fixed: the registry refuses any).

    `options`: `opening=2017|2022|today` (the chat client's era; default today).
    """
    config = default_config(settings, step_timeout=step_timeout)
    from wallwatch.protocols.whatsapp import OPENINGS

    opening = (options or {}).get("opening")
    if opening is not None:
        if opening not in OPENINGS:
            raise ValueError(f"whatsapp: opening must be one of {', '.join(OPENINGS)}, not {opening!r}")
        config = replace(config, opening=opening)
    return measure_whatsapp(config, settings, stamp=stamp, progress=progress)
