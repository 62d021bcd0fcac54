"""The lab's address map: which lab address stands in for which real-world one.

Everything in the lab lives in 198.18.0.0/15, the block RFC 2544 reserves for
benchmarking: it is never routed on the internet, so a lab address can never be
mistaken for (or leak to) a real host. Links use 198.18.0.0/16; the lab
"internet" where emulated services live uses 198.19.0.0/16.

Two maps, both handed to the probe in the lab state file (the contract is in
`wallwatch.probe.settings`):
* names -> lab addresses (`names`): what the lab's DNS resolver answers;
* real-world IPs/CIDRs -> lab addresses (`address_map`): for targets the probe
  dials by address (call relays), translated by the probe before dialling.
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

# Every name the lab's resolver answers; anything else is NXDOMAIN.
NAMES: Mapping[str, str] = MappingProxyType({**CHAT_SERVERS, **HTTPS_SERVICES})

# Real-world call-relay addresses -> lab relays. WhatsApp's relays live in
# Meta's address space (AS32934 announces 157.240.0.0/16 and 31.13.64.0/18);
# each block maps to one lab relay so that any relay address a probe list
# names is reachable in the lab. Exact addresses win over blocks.
REAL_TO_LAB: Mapping[str, str] = MappingProxyType(
    {
        "157.240.0.0/16": CALL_RELAYS[0],
        "31.13.64.0/18": CALL_RELAYS[1],
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
    return (RESOLVER, *CHAT_SERVERS.values(), *HTTPS_SERVICES.values(), *CALL_RELAYS)
