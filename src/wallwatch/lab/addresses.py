"""The lab's address map: which lab address stands in for which real-world one.

Everything in the lab lives in 198.18.0.0/15, the block RFC 2544 reserves for
benchmarking: it is never routed on the internet, so a lab address can never be
mistaken for (or leak to) a real host. Links use 198.18.0.0/16; the lab
"internet" where emulated services live uses 198.19.0.0/16.

Two maps, both handed to the probe in the lab state file (the contract is in
`wallwatch.probe.settings`):
* names -> lab addresses (`names`): what the lab's DNS resolver answers;
* real-world IPs/CIDRs -> lab addresses (`address_map`): for targets the probe
  dials by address (call relays, Telegram's data centres), translated by the
  probe before dialling.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

# --- links (see docs/architecture.md, "The lab") ------------------------------
CLIENT_ADDRESS = "198.18.0.2"
CENSOR_CLIENT_SIDE = "198.18.0.1"
CENSOR_SERVICES_SIDE = "198.18.254.1"
SERVICES_ADDRESS = "198.18.254.2"
LINK_PREFIX_LEN = 24
LAB_BLOCK = "198.18.0.0/15"  # RFC 2544 benchmarking block: the only thing lab routes cover
LINKS_BLOCK = "198.18.0.0/16"
INTERNET_BLOCK = "198.19.0.0/16"

# --- several ISPs (vantage points) ----------------------------------------------
# ISP k (1-based) of a multi-ISP lab: client subnet 198.18.k.0/24, censor<->svc
# link 198.18.(200+k).0/24. The single-ISP lab keeps 198.18.0.0/24 and
# 198.18.254.0/24 above. k stays below 100 because 198.18.100.0/24 and
# 198.18.101.0/24 are the VPN tunnels of lab/vpn_servers.py.
MAX_ISPS = 50
_ISP_LINK_BASE = 200


@dataclass(frozen=True, slots=True)
class IspAddresses:
    """The four link addresses of one ISP's client and censor; `client_subnet` is what svc routes back."""

    client: str
    censor_client_side: str
    censor_services_side: str
    services_side: str
    client_subnet: str


def isp_addresses(index: int) -> IspAddresses:
    """Addresses of ISP `index`: 0 is the single-ISP lab, 1..MAX_ISPS the ISPs of a multi-ISP lab."""
    if index == 0:
        return IspAddresses(CLIENT_ADDRESS, CENSOR_CLIENT_SIDE, CENSOR_SERVICES_SIDE, SERVICES_ADDRESS, LINKS_BLOCK)
    if not 1 <= index <= MAX_ISPS:
        raise ValueError(f"ISP index {index} is outside 1..{MAX_ISPS}")
    link = _ISP_LINK_BASE + index
    return IspAddresses(
        client=f"198.18.{index}.2",
        censor_client_side=f"198.18.{index}.1",
        censor_services_side=f"198.18.{link}.1",
        services_side=f"198.18.{link}.2",
        client_subnet=f"198.18.{index}.0/{LINK_PREFIX_LEN}",
    )

# --- the lab "internet" --------------------------------------------------------
RESOLVER = "198.19.0.53"
# Forged DNS answers point here by default. No host has this address, so a
# connection to it times out: like the GFW's forged answers, which point at
# addresses that do not answer (GFWatch, Hoang et al. 2021, arXiv 2106.02167).
SINK = "198.19.250.1"

CHAT_PORTS = (443, 5222)  # OONI ts-018-whatsapp: e1..e16.whatsapp.net on 443 and 5222
HTTPS_PORT = 443
STUN_PORT = 3478  # RFC 5389 §18.4: the default STUN port

CHAT_SERVER_COUNT = 16
CHAT_SERVERS: Mapping[str, str] = MappingProxyType(
    {f"e{i}.whatsapp.net": f"198.19.1.{i}" for i in range(1, CHAT_SERVER_COUNT + 1)}
)
REGISTRATION = "v.whatsapp.net"
WEB = "web.whatsapp.com"
MEDIA = "mmg.whatsapp.net"
HTTPS_SERVICES: Mapping[str, str] = MappingProxyType(
    {REGISTRATION: "198.19.2.1", WEB: "198.19.2.2", MEDIA: "198.19.2.3"}
)
CALL_RELAYS: tuple[str, ...] = ("198.19.3.1", "198.19.3.2")

# --- the other messaging services (docs/services.md) ------------------------------
# One /24 per service, so a policy can black-hole one service's addresses without
# touching another's (no collateral verdicts by construction).

# Telegram's data centres, dialled by address as clients and OONI ts-020 do, on 443
# and 80: the DC addresses of OONI's ts-020 example -> lab DCs speaking MTProto.
TELEGRAM_DC_PORTS = (443, 80)
TELEGRAM_DCS: Mapping[str, str] = MappingProxyType({
    "149.154.175.50": "198.19.10.1", "149.154.167.51": "198.19.10.2", "149.154.175.100": "198.19.10.3",
    "149.154.167.91": "198.19.10.4", "149.154.171.5": "198.19.10.5", "95.161.76.100": "198.19.10.6",
})

# WeChat (198.19.13.0/24): the long link (mmtls on TCP 8080) and the short link (HTTP POST of
# mmtls records on port 80), [CitizenLab2024]; each on its own address.
MMTLS_LONG_LINK_PORT = 8080
MMTLS_SHORT_LINK_PORT = 80
MMTLS_LONG_LINKS: Mapping[str, str] = MappingProxyType({"long.weixin.qq.com": "198.19.13.1"})
MMTLS_SHORT_LINKS: Mapping[str, str] = MappingProxyType({"short.weixin.qq.com": "198.19.13.2"})

# Viber (198.19.15.0/24), dialled by address as in nDPI's Viber capture ([nDPI]
# tests/result/Viber_session.pcap.out): the chat server on TCP 4244 and 5242, a call relay on UDP 7985.
VIBER_CHAT_PORTS = (4244, 5242)
VIBER_CALL_PORT = 7985
VIBER_CHAT_SERVERS: Mapping[str, str] = MappingProxyType({"52.0.253.46": "198.19.15.1"})
VIBER_CALL_RELAYS: Mapping[str, str] = MappingProxyType({"54.169.63.186": "198.19.15.10"})

# Apple's push courier for FaceTime (198.19.16.0/24): TLS on 5223 with ALPN apns-security-v3 ([pypush]).
APNS_PORT = 5223
APNS_COURIERS: Mapping[str, str] = MappingProxyType({"1-courier.push.apple.com": "198.19.16.1"})

# Call relays dialled by address, each service's real block -> its lab relay (STUN on 3478):
# WeChat in Tencent's Hong Kong network, Skype in Microsoft's media block [Microsoft365-Endpoints],
# FaceTime in Apple's 17.0.0.0/8 [Apple-Enterprise].
SERVICE_RELAYS: Mapping[str, str] = MappingProxyType({
    "203.205.128.0/19": "198.19.13.10",
    "52.112.0.0/14": "198.19.14.10",
    "17.0.0.0/8": "198.19.16.10",
})

# The emulated chat platform that filters its users' messages by keyword (lab/chat_platform.py):
# a lab name under RFC 2606's reserved `.test`, since it stands for no one platform.
CHAT_PLATFORMS: Mapping[str, str] = MappingProxyType({"chat-platform.test": "198.19.17.1"})

# HTTPS sites (lab/https_server.py): web clients and APIs answer a page, media hosts
# (MEDIA_SITES) keep uploads and serve a photo-sized sample at /d/sample.jpg.
HTTPS_SITES: Mapping[str, str] = MappingProxyType({
    "web.telegram.org": "198.19.10.20",
    "cdn4.telesco.pe": "198.19.10.21",
    "chat.signal.org": "198.19.11.1",
    "cdn.signal.org": "198.19.11.2",
    "cdn2.signal.org": "198.19.11.3",
    "storage.signal.org": "198.19.11.4",
    "sfu.voip.signal.org": "198.19.11.5",
    "b-api.facebook.com": "198.19.12.2",
    "b-graph.facebook.com": "198.19.12.3",
    "scontent.xx.fbcdn.net": "198.19.12.4",
    "external.xx.fbcdn.net": "198.19.12.5",
    "star.c10r.facebook.com": "198.19.12.6",
    "mmsns.qpic.cn": "198.19.13.3",
    "wx.qq.com": "198.19.13.4",
    "web.wechat.com": "198.19.13.5",
    "client-s.gateway.messenger.live.com": "198.19.14.1",
    "api.asm.skype.com": "198.19.14.2",
    "web.skype.com": "198.19.14.3",
    "dl-media.viber.com": "198.19.15.2",
    "share.cdn.viber.com": "198.19.15.3",
})
MEDIA_SITES = frozenset({"cdn4.telesco.pe", "cdn.signal.org", "cdn2.signal.org", "scontent.xx.fbcdn.net",
                         "external.xx.fbcdn.net", "mmsns.qpic.cn", "api.asm.skype.com", "dl-media.viber.com",
                         "share.cdn.viber.com"})

# MQTT inside TLS on 443: Messenger's chat edge (OONI ts-019's facebook_edge).
MQTT_TLS_SERVERS: Mapping[str, str] = MappingProxyType({"edge-mqtt.facebook.com": "198.19.12.1"})

# STUN servers reached by name (WhatsApp's relays are dialled by address: CALL_RELAYS).
STUN_SERVERS: Mapping[str, str] = MappingProxyType({
    "stun.fbsbx.com": "198.19.12.7",
    "sfu.voip.signal.org": HTTPS_SITES["sfu.voip.signal.org"],  # the SFU takes ICE checks where it serves HTTPS
})

# --- the web (web_connectivity's inputs, lab/websites.py) -------------------------------
# The sites of the 2017 list (probe/nettests/lists/cn-2017.txt), one address each in their own /24,
# serving a page on 80 and 443; and the web_connectivity test helper (`wallwatch helper serve`),
# beside the resolver, outside the censor. ".test" is reserved for testing (RFC 6761 §6.2).
WEB_BLOCK = "198.19.40.0/24"
WEB_SITES: Mapping[str, str] = MappingProxyType({
    "www.google.com": "198.19.40.1",
    "mail.google.com": "198.19.40.2",
    "www.facebook.com": "198.19.40.3",
    "www.instagram.com": "198.19.40.4",
    "twitter.com": "198.19.40.5",
    "www.youtube.com": "198.19.40.6",
    "cn.nytimes.com": "198.19.40.7",
    "www.rfa.org": "198.19.40.8",
    "www.voachinese.com": "198.19.40.9",
    "www.bbc.com": "198.19.40.10",
    "s.weibo.com": "198.19.40.11",
    "www.baidu.com": "198.19.40.12",
    "weixin.qq.com": "198.19.40.13",
})
WEB_PORTS = (80, 443)
TEST_HELPER_NAME = "th.wallwatch.test"
TEST_HELPER = "198.19.0.80"
TEST_HELPER_URL = f"https://{TEST_HELPER_NAME}/"

# Every name the lab's resolver answers; anything else is NXDOMAIN.
NAMES: Mapping[str, str] = MappingProxyType({**CHAT_SERVERS, **HTTPS_SERVICES, **HTTPS_SITES, **MQTT_TLS_SERVERS,
                                             **STUN_SERVERS, **MMTLS_LONG_LINKS, **MMTLS_SHORT_LINKS,
                                             **APNS_COURIERS, **CHAT_PLATFORMS, **WEB_SITES,
                                             TEST_HELPER_NAME: TEST_HELPER})

# Real-world call-relay addresses -> lab relays. WhatsApp's relays live in
# Meta's address space (AS32934 announces 157.240.0.0/16 and 31.13.64.0/18);
# each block maps to one lab relay so that any relay address a probe list
# names is reachable in the lab. Exact addresses win over blocks.
REAL_TO_LAB: Mapping[str, str] = MappingProxyType(
    {
        "157.240.0.0/16": CALL_RELAYS[0],
        "31.13.64.0/18": CALL_RELAYS[1],
        **TELEGRAM_DCS,
        **VIBER_CHAT_SERVERS,
        **VIBER_CALL_RELAYS,
        **SERVICE_RELAYS,
    }
)


def lab_address_for(name: str) -> str:
    """The lab address the lab's resolver gives `name` (case and final dot ignored)."""
    key = name.lower().rstrip(".")
    try:
        return NAMES[key]
    except KeyError:
        raise KeyError(f"{name!r} is not an emulated name; the lab answers NXDOMAIN for it") from None


def service_addresses() -> tuple[str, ...]:
    """Every address the services namespace holds on its dummy link."""
    return tuple(dict.fromkeys((RESOLVER, *CHAT_SERVERS.values(), *HTTPS_SERVICES.values(), *CALL_RELAYS,
                                *TELEGRAM_DCS.values(), *NAMES.values(), *VIBER_CHAT_SERVERS.values(),
                                *VIBER_CALL_RELAYS.values(), *SERVICE_RELAYS.values())))
