"""The client reaches every emulated service through the censor namespace."""

from __future__ import annotations

import hashlib

import pytest

from wallwatch.lab import addresses
from wallwatch.lab.https_server import sample_photo
from wallwatch.lab.topology import Lab
from wallwatch.probe.settings import AddressMap

from lab_helpers import client_check

pytestmark = pytest.mark.lab


@pytest.mark.parametrize(
    "name, transport, qtype, rcode, answer",
    [
        ("e1.whatsapp.net", "udp", "A", "NOERROR", ["198.19.1.1"]),
        ("E16.WhatsApp.net", "tcp", "A", "NOERROR", ["198.19.1.16"]),
        ("mmg.whatsapp.net", "udp", "AAAA", "NOERROR", []),
        ("telegram.org", "udp", "A", "NXDOMAIN", []),
    ],
)
def test_dns(plain_lab: Lab, name: str, transport: str, qtype: str, rcode: str, answer: list[str]) -> None:
    result = client_check(plain_lab, "dns", name, transport, qtype)
    assert (result["rcode"], result["addresses"]) == (rcode, answer)


def test_https_registration_and_web_over_verified_tls(plain_lab: Lab) -> None:
    register = client_check(plain_lab, "https", "GET", "v.whatsapp.net", "/v2/register")
    assert register["status"] == 200
    assert register["text"] == '{"status":"fail","reason":"missing_param"}'
    assert register["tls_version"] == "TLSv1.3" and register["alpn"] == "http/1.1"
    assert "v.whatsapp.net" in register["peer_names"]

    web = client_check(plain_lab, "https", "GET", "web.whatsapp.com", "/")
    assert web["status"] == 200 and web["content_type"].startswith("text/html")
    assert "WhatsApp Web" in web["text"]

    # Outside lab mode (system trust store) the lab's certificate is refused.
    assert client_check(plain_lab, "tls-untrusted", "web.whatsapp.com")["verified"] is False


def test_media_upload_download_and_sample(plain_lab: Lab) -> None:
    round_trip = client_check(plain_lab, "media", "250000")
    assert round_trip["status"] == 200 and round_trip["same"] is True
    assert round_trip["receipt"]["size"] == 250000

    sample = client_check(plain_lab, "https", "GET", "mmg.whatsapp.net", "/d/sample.jpg")
    assert sample["status"] == 200 and sample["length"] == 200 * 1024
    assert sample["sha256"] == hashlib.sha256(sample_photo()).hexdigest()
    assert client_check(plain_lab, "https", "GET", "mmg.whatsapp.net", "/d/nosuchid")["status"] == 404


@pytest.mark.parametrize("name, port, edge", [("e1.whatsapp.net", "443", "no"), ("e16.whatsapp.net", "5222", "edge")])
def test_chat_handshake_and_echo(plain_lab: Lab, name: str, port: str, edge: str) -> None:
    assert client_check(plain_lab, "chat", name, port, edge) == {"handshake": True, "echoed_all": True, "echoed": 2}


def test_chat_server_closes_cleanly_on_non_whatsapp_bytes(plain_lab: Lab) -> None:
    assert client_check(plain_lab, "chat-garbage", "e7.whatsapp.net", "5222") == {"closed": "fin", "bytes": 0}


@pytest.mark.parametrize("relay", addresses.CALL_RELAYS)
def test_stun_binding(plain_lab: Lab, relay: str) -> None:
    result = client_check(plain_lab, "stun", relay)
    assert result["class"] == "success" and result["txid_matches"]
    assert result["mapped"] == [addresses.CLIENT_ADDRESS, result["local_port"]]


def test_real_world_relay_addresses_map_to_lab_relays(plain_lab: Lab) -> None:
    relay = AddressMap.parse(addresses.REAL_TO_LAB).map("157.240.1.1")
    assert relay in addresses.CALL_RELAYS
    assert client_check(plain_lab, "stun", relay)["class"] == "success"
