"""An independent DPI engine names the lab's traffic as the service it emulates.

The lab tests a censor against traffic that must look like the real apps'
on the wire, or the censor is tested against traffic no censor ever saw.
Here each nettest's traffic is captured with tcpdump in the client
namespace and classified by nDPI's `ndpiReader` (Debian's libndpi-bin,
[nDPI]): every flow must be named as the service the nettest measures, or
be one of the listed exceptions, each with the reason nDPI cannot name it.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from wallwatch.lab.scenario import probe_in_lab

pytestmark = [pytest.mark.lab, pytest.mark.slow]

# What nDPI calls each emulated service (its protocol names, `ndpiReader -a 0`).
NDPI_NAMES: dict[str, set[str]] = {
    "whatsapp": {"WhatsApp"},
    "telegram": {"Telegram"},
    "signal": {"Signal"},
    # nDPI names Messenger's chat edge "Messenger" and the rest of Facebook's hosts "Facebook".
    "facebook_messenger": {"Messenger", "Facebook"},
    "wechat": {"WeChat"},
    # Skype's cloud hosts are "Skype_Teams"; a STUN request with Microsoft's ICE attribute "SkypeCall".
    "skype": {"Skype_Teams", "SkypeCall"},
    "viber": {"Viber"},
    # FaceTime's push channel is Apple's courier: nDPI names it (there is no FaceTime name in 4.2).
    "facetime": {"ApplePush"},
}

# Flows nDPI cannot name as the service, and why: (nettest, server port or None, nDPI name) -> reason.
EXCEPTIONS: dict[tuple[str, int | None, str], str] = {
    ("*", 3478, "STUN"): "a STUN Binding request carries nothing of the app: nDPI 4.2 (stun.c) names WhatsApp/"
                         "Messenger/Signal/FaceTime calls by the relays' real address blocks (Meta's, Apple's "
                         "17.0.0.0/8), which the lab's 198.19 stand-ins are not, and has no rule for WeChat's",
    ("wechat", None, "QQ"): "nDPI 4.2's host rules match `.qq.com` (QQ, Tencent's other messenger) before "
                            "`.weixin.`: WeChat's mainland hosts (`long.`/`short.weixin.qq.com`, `wx.qq.com`) "
                            "read QQ; its international web client `web.wechat.com` reads WeChat",
    ("wechat", 8080, "HTTP_Proxy"): "nDPI has no WeChat dissector (upstream marks WeChat 'no dissector'): the "
                                    "long link's mmtls records carry no name, so port 8080 names it",
    ("wechat", 443, "TLS"): "the Moments CDN `mmsns.qpic.cn`: nDPI's rule `.mmsns.qpic.cn` wants a name in front",
    ("skype", 443, "TLS"): "the chat service `client-s.gateway.messenger.live.com`: nDPI 4.2 lists "
                           "`*.gateway.messenger.live.com` with a literal `*` its host matcher never meets",
    ("telegram", 443, "TLS"): "MTProto obfuscated2 looks random by design: telegram.c knows only the plain "
                              "abridged transport (first byte 0xef) and Telegram's address blocks; the "
                              "file CDN cdn4.telesco.pe is in no nDPI host list either",
    ("telegram", 80, "HTTP"): "the same DCs on port 80: named by the port only",
    ("*", 53, "DNS"): "the DNS control (example.com) and names nDPI has no host rule for (telesco.pe)",
}
# Flows whose TLS server name is a control's, and why nDPI names them otherwise: server name -> reason.
CONTROL_NAMES: dict[str, str] = {
    "example.org": "the SNI and throughput controls (probe/throughput.py) fetch the same bytes from the same "
                   "server under a name no censor lists (RFC 2606), on purpose not the service's: plain TLS",
}
SERVER_NAME = re.compile(r"\[Hostname/SNI: (?P<name>[^]]+)\]")
# A flow that carried no payload either way (the calls' latency control: TCP connects timed to a relay,
# answered by SYN-ACK or RST) has nothing to classify; nDPI only guesses by port ("Match by port").
NO_PAYLOAD = "[Goodput ratio: 0/0]"

FLOW = re.compile(r"^\s+\d+\s+(?P<proto>TCP|UDP) [0-9.]+:\d+ <-> (?P<server>[0-9.]+):(?P<port>\d+) "
                  r"\[proto: [0-9.]+/(?P<name>[^]]+)\]")


def _require_ndpi() -> None:
    for tool in ("ndpiReader", "tcpdump"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/install.sh installs libndpi-bin and tcpdump)")


def capture(lab: Any, nettest: str, tmp_path: Path, extra_args: list[str] | None = None) -> tuple[Path, dict[str, Any]]:
    """Run a nettest in the client namespace while tcpdump records its interface; the pcap once complete,
    and the nettest's measurement."""
    pcap = tmp_path / f"{nettest}.pcap"
    err = tmp_path / "tcpdump.err"
    with err.open("w") as stderr:
        # --immediate-mode: libpcap otherwise hands packets over a ring block at a time (after up to a
        # second), so the last block of a short nettest could still be in the kernel when tcpdump stops.
        tcpdump = subprocess.Popen(["ip", "netns", "exec", lab.client_ns, "tcpdump", "--immediate-mode", "-U", "-n",
                                    "-i", "to-censor", "-w", str(pcap)], stderr=stderr)
    try:
        deadline = time.monotonic() + 10
        while "listening on" not in err.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        measurement = probe_in_lab(lab, tmp_path / "m.jsonl", timeout=2.0, nettest=nettest, extra_args=extra_args)
        # tcpdump reads the kernel's buffer at its own pace: stop once the file stops growing.
        size = -1
        while pcap.stat().st_size != size and time.monotonic() < deadline + 30:
            size = pcap.stat().st_size
            time.sleep(0.3)
    finally:
        tcpdump.send_signal(signal.SIGINT)
        tcpdump.wait(10)
    return pcap, measurement


def contacted(measurement: dict[str, Any]) -> set[tuple[str, int]]:
    """Every (server address, port) the nettest connected to or exchanged datagrams with: a capture must hold them all."""
    keys = measurement["test_keys"]
    servers = {(c["ip"], c["port"]) for c in keys.get("tcp_connect") or () if c["status"]["success"]}
    for exchange in keys["x_wallwatch"].get("udp_exchanges") or ():
        if exchange.get("failure") is None:
            address, _, port = exchange["address"].rpartition(":")
            servers.add((address, int(port)))
    return servers


def classify(pcap: Path) -> list[tuple[str, str, int, str]]:
    """(proto, server address, server port, nDPI's app name) per flow; a control's flow (its TLS
    server name in CONTROL_NAMES) and a flow with no payload are left out."""
    out = subprocess.run(["ndpiReader", "-i", str(pcap), "-v", "2"], capture_output=True, text=True, timeout=60)
    flows = []
    for line in out.stdout.splitlines():
        match = FLOW.match(line)
        name = SERVER_NAME.search(line)
        if match and not (name and name["name"] in CONTROL_NAMES) and NO_PAYLOAD not in line:
            app = match["name"].split(".")[-1]  # "TLS.WhatsApp" -> WhatsApp; "WhatsApp" -> WhatsApp
            flows.append((match["proto"], match["server"], int(match["port"]), app))
    return flows


def _exception(nettest: str, port: int, app: str) -> str | None:
    return (EXCEPTIONS.get((nettest, port, app)) or EXCEPTIONS.get((nettest, None, app))
            or EXCEPTIONS.get(("*", port, app)))


def ndpi_version() -> tuple[int, ...]:
    banner = subprocess.run(["ndpiReader", "-h"], capture_output=True, text=True, timeout=30)
    found = re.search(r"nDPI (\d+)\.(\d+)", banner.stdout + banner.stderr)
    return (int(found[1]), int(found[2])) if found else (0, 0)


# WhatsApp's openings (protocols.whatsapp.OPENINGS) and the first nDPI release whose whatsapp.c knows each.
OPENING_KNOWN_SINCE = {"2017": (0, 0), "2022": (4, 2), "today": (4, 3)}  # today: releases after 4.2


@pytest.mark.parametrize(("nettest", "options"), [
    ("whatsapp", ["--option", "opening=2017"]), ("whatsapp", ["--option", "opening=2022"]),
    ("whatsapp", ["--option", "opening=today"]),
    ("telegram", []), ("signal", []), ("facebook_messenger", []),
    ("wechat", []), ("skype", []), ("viber", []), ("facetime", []),
], ids=["whatsapp-2017", "whatsapp-2022", "whatsapp-today", "telegram", "signal", "facebook_messenger",
        "wechat", "skype", "viber", "facetime"])
def test_ndpi_names_each_flow_as_the_emulated_service(plain_lab: Any, nettest: str, options: list[str],
                                                      tmp_path: Path) -> None:
    _require_ndpi()
    opening = options[-1].partition("=")[2] if options else None
    if opening and ndpi_version() < OPENING_KNOWN_SINCE[opening]:
        pytest.skip(f"nDPI {ndpi_version()} predates the {opening!r} WhatsApp opening in whatsapp.c "
                    f"(known since {OPENING_KNOWN_SINCE[opening]})")
    pcap, measurement = capture(plain_lab, nettest, tmp_path, options)
    flows = classify(pcap)
    # A capture missing any flow the nettest made would let a misnamed flow pass unseen.
    assert contacted(measurement) <= {(server, port) for _, server, port, _ in flows}, (contacted(measurement), flows)
    named = Counter(app for _, _, _, app in flows if app in NDPI_NAMES[nettest])
    wrong = [flow for flow in flows if flow[3] not in NDPI_NAMES[nettest] and not _exception(nettest, flow[2], flow[3])]
    assert not wrong, f"{nettest}: flows nDPI names otherwise, with no listed reason: {wrong}"
    assert named, f"{nettest}: nDPI named no flow as the service: {flows}"
    if nettest == "whatsapp":
        # The chat transport itself, on 443 and 5222: the opening is what nDPI keys on.
        chat = [flow for flow in flows if flow[1].startswith("198.19.1.")]
        assert len(chat) == 32 and {app for *_, app in chat} == {"WhatsApp"}, chat
    if nettest in APP_PROTOCOL_FLOWS:
        # The flows that carry the app's own protocol (not TLS), named by nDPI as the app.
        port, expected = APP_PROTOCOL_FLOWS[nettest]
        assert {app for _, _, p, app in flows if p == port} == {expected}, flows


# Flows of an app's own protocol that nDPI 4.2 names by the app: Viber's chat hello on 4244 (by its port,
# TCP) and its call ping on UDP 7985 (by viber.c's datagram shapes); Skype's STUN by Microsoft's attribute.
APP_PROTOCOL_FLOWS: dict[str, tuple[int, str]] = {"viber": (7985, "Viber"), "skype": (3478, "SkypeCall")}
