"""The parts of lab.vpn_servers written here, without a lab: the emulated DC over loopback,
the HTTP backend, obfs4's SOCKS credentials, the OpenVPN certificates."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from wallwatch.lab import vpn_servers
from wallwatch.protocols import mtproto


async def _dc_exchange(record: Path, payloads: list[bytes]) -> None:
    async def on_dc(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await vpn_servers._serve_dc_connection(reader, writer, record)

    server = await asyncio.start_server(on_dc, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        for payload in payloads:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for part in (payload[:10], payload[10:]):  # split: the DC must reassemble
                writer.write(part)
                await writer.drain()
            writer.close()
            await writer.wait_closed()
        for _ in range(100):  # the DC records when each connection ends
            if record.exists() and len(record.read_text().splitlines()) == len(payloads):
                break
            await asyncio.sleep(0.02)


def _req_pq_multi(tag: bytes) -> bytes:
    header, session = mtproto.client(tag, dc_id=2)
    nonce = os.urandom(16)
    body = mtproto.REQ_PQ_MULTI.to_bytes(4, "little") + nonce
    message = (0).to_bytes(8, "little") + (7 << 32).to_bytes(8, "little") + len(body).to_bytes(4, "little") + body
    return header + session.send.apply(mtproto.frame(tag, message))


@pytest.mark.parametrize("tag", [mtproto.TAG_ABRIDGED, mtproto.TAG_INTERMEDIATE, mtproto.TAG_PADDED_INTERMEDIATE])
def test_dc_decrypts_and_records_the_first_message(tmp_path: Path, tag: bytes) -> None:
    record = tmp_path / "dc.jsonl"
    asyncio.run(_dc_exchange(record, [_req_pq_multi(tag)]))
    [entry] = [json.loads(line) for line in record.read_text().splitlines()]
    assert entry["event"] == "message"
    assert entry["transport"] == mtproto.TRANSPORT_NAMES[tag]
    assert entry["dc_id"] == 2
    assert entry["constructor"] == "0xbe7e8ef1" and entry["message_length"] == 20 and entry["auth_key_id"] == 0


def test_dc_records_garbage_and_short_streams_without_a_message(tmp_path: Path) -> None:
    record = tmp_path / "dc.jsonl"
    garbage = b"GET / HTTP/1.1\r\n" + bytes(100)
    random_bytes = os.urandom(100)
    random_bytes = b"\x01" + random_bytes[1:]  # never the plain-abridged marker
    asyncio.run(_dc_exchange(record, [garbage, random_bytes, os.urandom(30)]))
    entries = [json.loads(line) for line in record.read_text().splitlines()]
    assert len(entries) == 3
    assert all(e["event"] == "connection" and "error" in e and "transport" not in e for e in entries), entries


def test_http_backend_answers_with_its_body() -> None:
    async def exchange() -> bytes:
        server = await asyncio.start_server(vpn_servers._serve_http_connection, "127.0.0.1", 0)
        async with server:
            reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname()[:2])
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            response = await asyncio.wait_for(reader.read(-1), 5)
            writer.close()
            return response

    response = asyncio.run(exchange())
    assert response.startswith(b"HTTP/1.1 200 OK\r\n") and response.endswith(vpn_servers.HTTP_BACKEND_BODY)


def test_obfs4_credentials_follow_pt_spec() -> None:
    short = vpn_servers.obfs4_socks_credentials("cert=abc,iat-mode=0")
    assert short == (b"cert=abc;iat-mode=0", b"\x00")
    long_args = "cert=" + "A" * 300 + ",iat-mode=1"
    username, password = vpn_servers.obfs4_socks_credentials(long_args)
    assert len(username) == 255 and username + password == long_args.replace(",", ";").encode()


def test_openvpn_pki_chains_to_its_ca_with_the_right_usages(tmp_path: Path) -> None:
    paths = vpn_servers._openvpn_pki(tmp_path)
    ca = x509.load_pem_x509_certificate(paths["ca"].read_bytes())
    for role, usage in (("server", ExtendedKeyUsageOID.SERVER_AUTH), ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):
        cert = x509.load_pem_x509_certificate(paths[role].read_bytes())
        cert.verify_directly_issued_by(ca)
        assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [usage]
        assert oct(paths[f"{role}-key"].stat().st_mode & 0o777) == "0o600"


def test_addresses_stay_in_the_lab_block() -> None:
    import ipaddress

    lab_internet = ipaddress.ip_network("198.19.4.0/24")
    assert all(ipaddress.ip_address(a) in lab_internet for a in vpn_servers.ADDRESSES.values())
    assert len(set(vpn_servers.ADDRESSES.values())) == len(vpn_servers.ADDRESSES)
    for tunnel in (*vpn_servers.OPENVPN_TUNNELS.values(), vpn_servers.WIREGUARD_TUNNEL):
        assert ipaddress.ip_network(tunnel).subnet_of(ipaddress.ip_network("198.18.0.0/15"))
