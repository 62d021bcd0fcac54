"""An emulated WhatsApp on loopback, with gates that censor by first bytes.

Real servers (DNS, chat transport, HTTPS, STUN) run on their own event loop in
a background thread, so the probe under test runs exactly as in production,
with its own `asyncio.run`. Each chat port and the HTTPS port sit behind a
`Gate` whose `decide(first_bytes)` plays the censor.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from tests.probe import servers
from wallwatch.probe.nettests.whatsapp import Timeouts, WhatsAppConfig
from wallwatch.probe.settings import ProbeSettings

CHAT_NAMES = tuple(f"e{i}.whatsapp.net" for i in range(1, 17))
NAMES = (*CHAT_NAMES, "v.whatsapp.net", "web.whatsapp.com", "mmg.whatsapp.net")
FAST = Timeouts(dns=0.5, dns_linger=0.15, connect=0.5, tls=0.6, chat=0.6, http=3.0, udp=0.8, control=0.6)


def allow(first: bytes) -> str:
    return servers.PASS


@dataclass
class Policy:
    """What the 'censor' does: per-port decisions on first bytes, DNS tricks, STUN behaviour."""

    chat_a: Callable[[bytes], str] = allow  # stands for port 443
    chat_b: Callable[[bytes], str] = allow  # stands for port 5222
    https: Callable[[bytes], str] = allow
    dns_inject: dict[str, str] = field(default_factory=dict)
    dns_drop: frozenset[str] = frozenset()
    stun: str = "answer"  # answer | silent | closed
    resolver: str = "up"  # up | gone


class LoopbackWhatsApp:
    def __init__(self, tmp: Path, policy: Policy) -> None:
        self.policy = policy
        self.pki = servers.make_pki(tmp, ["web.whatsapp.com", "v.whatsapp.net", "mmg.whatsapp.net", "localhost"], tag="wa")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.handles: list[Any] = []
        self.ports: dict[str, int] = {}

    def __enter__(self) -> "LoopbackWhatsApp":
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    async def _start(self) -> None:
        p = self.policy
        if p.resolver == "up":
            dns = await servers.start_dns(servers.DnsServer({n: servers.LOOPBACK for n in NAMES},
                                                            inject=p.dns_inject, drop=p.dns_drop))
            self.handles.append(dns.transport)
            self.ports["dns"] = dns.port
        else:
            self.ports["dns"] = servers.free_udp_port()
        chat_server, chat_port = await servers.start_tcp(servers.chat)
        https_server, https_port = await servers.start_tcp(
            servers.https_app, ssl_context=servers.server_context(self.pki))
        self.handles += [chat_server, https_server]
        for name, backend, decide in (("chat_a", chat_port, p.chat_a), ("chat_b", chat_port, p.chat_b),
                                      ("https", https_port, p.https)):
            gate, port = await servers.start_gate(backend, decide)
            self.handles.append(gate)
            self.ports[name] = port
        if p.stun == "closed":
            self.ports["stun"] = servers.free_udp_port()
        else:
            stun = await servers.start_stun(answer=p.stun == "answer")
            self.handles.append(stun.transport)
            self.ports["stun"] = stun.port

    async def _stop(self) -> None:
        for handle in self.handles:
            handle.close()
        for handle in self.handles:
            if isinstance(handle, asyncio.Server):
                await asyncio.wait_for(handle.wait_closed(), 3)

    def config(self, **overrides: Any) -> WhatsAppConfig:
        base = WhatsAppConfig(
            chat_hosts=("e1.whatsapp.net", "e2.whatsapp.net"),
            chat_ports=(self.ports["chat_a"], self.ports["chat_b"]),
            https_port=self.ports["https"],
            call_relays=(servers.LOOPBACK,),
            stun_port=self.ports["stun"],
            expected_networks=("127.0.0.1/32",),
            timeouts=FAST,
        )
        return replace(base, **overrides)

    def settings(self) -> ProbeSettings:
        return ProbeSettings(resolver=(servers.LOOPBACK, self.ports["dns"]), ca_file=str(self.pki.ca_pem))
