"""The circumvention nettest never reaches past the lab: no client starts where a route leads out,
and no torrc (the probe's client, the lab's bridge) names an address outside the lab.

Tor knows the real network's directory authorities and fallback directories by
heart; a tor started in the machine's own namespace once dialled one. Nothing
here starts a client: the guard's test makes any start fail loudly.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from pathlib import Path

import pytest

from wallwatch.lab import addresses, vpn_servers
from wallwatch.probe.nettests import TargetError, circumvention
from wallwatch.probe.settings import ProbeSettings

LAB = ipaddress.ip_network(addresses.LAB_BLOCK)
V4_HEADER = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT"
# A fresh namespace's IPv6 table: the kernel's unreachable default (RTF_REJECT) on lo, and ::1.
V6_SEALED = (
    "00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 "
    "ffffffff 00000001 00000000 00200200       lo\n"
    "00000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 "
    "00000000 00000002 00000000 80200001       lo\n")


def _ips(text: str) -> set[str]:
    return set(re.findall(r"\b\d{1,3}(?:\.\d{1,3}){3}\b", text))


def test_a_default_route_is_a_way_out_and_the_kernels_unreachable_one_is_not() -> None:
    lab_client = f"{V4_HEADER}\nveth0\t0000FE0C\t010012C6\t0003\t0\t0\t0\t0000FEFF\t0\t0\t0\n"  # 198.18.0.0/15 only
    assert circumvention.routes_out(lab_client, V6_SEALED) == []
    root = f"{V4_HEADER}\neth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
    assert circumvention.routes_out(root, V6_SEALED) == ["default via eth0"]
    v6_out = ("00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
              "fd000000000000000000000000000001 00000400 00000003 00000000 00000003     eth0\n")
    assert circumvention.routes_out(lab_client, v6_out) == ["::/0 via eth0"]


def test_no_client_starts_where_a_route_leads_out(monkeypatch: pytest.MonkeyPatch) -> None:
    async def refuse(self: object) -> None:
        raise AssertionError("a client was started outside the lab")

    monkeypatch.setattr(circumvention._Client, "start", refuse)
    monkeypatch.setattr(circumvention, "namespace_routes_out", lambda: ["default via eth0"])
    config = circumvention.CircumventionConfig(servers={"tor": {"address": "198.19.4.6", "port": 9001,
                                                                 "fingerprint": "A" * 40}})
    with pytest.raises(TargetError, match="only in a lab namespace"):
        asyncio.run(circumvention.run_circumvention(config, ProbeSettings()))


def test_this_machines_own_namespace_is_refused_if_it_has_a_way_out() -> None:
    out = circumvention.namespace_routes_out()
    if not out:
        pytest.skip("this namespace has no default route: nothing to refuse here")
    assert all(entry.startswith(("default via", "::/0 via")) for entry in out)


def test_the_probes_torrc_names_only_the_lab_bridge(tmp_path: Path) -> None:
    bridge = "198.19.4.7"
    text = circumvention.tor_client_torrc(tmp_path, [f"Bridge obfs4 {bridge}:443 {'A' * 40} cert=x iat-mode=0"],
                                          bridge)
    assert "UseDefaultFallbackDirs 0" in text and "UseBridges 1" in text
    assert re.search(r"^DirAuthority ", text, re.M)  # without one, tor uses the real authorities
    assert _ips(text) == {bridge}


def test_the_lab_bridges_torrc_lines_name_only_lab_addresses() -> None:
    text = "\n".join(vpn_servers.tor_offline_lines())
    assert "UseDefaultFallbackDirs 0" in text and re.search(r"^DirAuthority ", text, re.M)
    assert _ips(text) and all(ipaddress.ip_address(ip) in LAB for ip in _ips(text))


def test_every_torrc_in_the_source_goes_through_these_functions() -> None:
    """A torrc written anywhere else could forget the lines above."""
    source = Path(circumvention.__file__).resolve().parents[3]
    writers = [path.relative_to(source) for path in source.rglob("*.py")
               if re.search(r"torrc\b.*write_text", path.read_text())]
    assert sorted(map(str, writers)) == ["wallwatch/lab/vpn_servers.py", "wallwatch/probe/nettests/circumvention.py"]
    assert "tor_offline_lines()" in Path(vpn_servers.__file__).read_text()
    assert "tor_client_torrc(" in Path(circumvention.__file__).read_text().split("def _tor(", 1)[1]
