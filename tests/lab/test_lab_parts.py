"""The lab's parts that need no namespace: address map, DNS answers, HTTP handlers, CA."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from wallwatch.lab import addresses
from wallwatch.lab.ca import make_lab_certificates
from wallwatch.lab.dns_server import answer, start_dns
from wallwatch.lab.https_server import MediaStore, Request, registration_handler, web_handler
from wallwatch.probe.settings import AddressMap
from wallwatch.protocols.dns import build_query, frame_tcp, parse_dns, unframe_tcp
from wallwatch.protocols.errors import Incomplete


def test_the_lab_address_map_as_the_probe_reads_it() -> None:
    lab_map = AddressMap.parse(addresses.REAL_TO_LAB, [addresses.LAB_BLOCK])
    assert lab_map.map("157.240.22.54") == "198.19.3.1"
    assert lab_map.map("31.13.70.1") == "198.19.3.2"
    assert lab_map.map("198.19.1.5") == "198.19.1.5"  # lab addresses map to themselves
    assert AddressMap.parse({"10.0.0.0/8": "198.19.3.2", "10.0.0.1": "198.19.3.1"}).map("10.0.0.1") == "198.19.3.1"
    with pytest.raises(KeyError, match="no lab address"):
        lab_map.map("8.8.8.8")


def test_lab_address_for() -> None:
    assert addresses.lab_address_for("E12.WhatsApp.net.") == "198.19.1.12"
    assert addresses.lab_address_for("mmg.whatsapp.net") == "198.19.2.3"
    with pytest.raises(KeyError, match="NXDOMAIN"):
        addresses.lab_address_for("whatsapp.net.evil.example")
    every = addresses.service_addresses()
    assert len(set(every)) == len(every) and addresses.SINK not in every


def test_dns_answers() -> None:
    facts = parse_dns(answer(build_query("v.whatsapp.net", query_id=7), addresses.NAMES) or b"")
    assert (facts.id, facts.rcode, facts.addresses) == (7, "NOERROR", ("198.19.2.1",))
    assert parse_dns(answer(build_query("signal.org"), addresses.NAMES) or b"").rcode == "NXDOMAIN"
    assert answer(b"\x00garbage", addresses.NAMES) is None
    response = answer(build_query("e1.whatsapp.net"), addresses.NAMES) or b""
    assert answer(response, addresses.NAMES) is None  # responses are never answered (no loops)


def test_dns_over_tcp_answers_pipelined_split_queries_and_closes_on_a_bad_length() -> None:
    async def exchange() -> tuple[list[str], bytes]:
        udp, tcp = await start_dns("127.0.0.1", addresses.NAMES, port=0)
        port = tcp.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            stream = frame_tcp(build_query("v.whatsapp.net", query_id=1)) + frame_tcp(build_query("signal.org", query_id=2))
            for piece in (stream[:1], stream[1:30], stream[30:]):  # the server must reassemble
                writer.write(piece)
                await writer.drain()
            received, rcodes = b"", []
            while len(rcodes) < 2:
                framed = unframe_tcp(received)
                if isinstance(framed, Incomplete):
                    received += await asyncio.wait_for(reader.read(4096), 5)
                    continue
                rcodes.append(parse_dns(framed[0]).rcode)
                received = received[framed[1]:]
            writer.write(b"\x00\x03abc")  # no DNS message is 3 bytes long
            closed = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            return rcodes, closed
        finally:
            udp.close()  # type: ignore[attr-defined]
            tcp.close()  # type: ignore[attr-defined]

    rcodes, after_bad_length = asyncio.run(exchange())
    assert rcodes == ["NOERROR", "NXDOMAIN"] and after_bad_length == b""


def test_http_handlers() -> None:
    assert registration_handler(Request("GET", "/v2/register?cc=1", "v.whatsapp.net", b"")).status == 200
    assert registration_handler(Request("GET", "/", "v.whatsapp.net", b"")).status == 404
    assert web_handler(Request("GET", "/", "web.whatsapp.com", b"")).content_type.startswith("text/html")
    store = MediaStore()
    receipt = store.handle(Request("POST", "/upload", None, b"\xff\xd8photo\xff\xd9"))
    assert receipt.status == 200
    import json

    object_id = json.loads(receipt.body)["id"]
    assert store.handle(Request("GET", f"/d/{object_id}", None, b"")).body == b"\xff\xd8photo\xff\xd9"
    assert store.handle(Request("POST", "/upload", None, b"")).status == 400
    for _ in range(100):
        store.handle(Request("POST", "/upload", None, b"x"))
    assert len(store.objects) == 64 and store.handle(Request("GET", f"/d/{object_id}", None, b"")).status == 404


def test_lab_certificates_verify_for_every_name(tmp_path: Path) -> None:
    paths = make_lab_certificates(tmp_path, addresses.NAMES, run_id="t1")
    leaf = x509.load_pem_x509_certificates(paths.server_cert.read_bytes())[0]
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert set(sans) == set(addresses.NAMES)
    assert paths.server_key.stat().st_mode & 0o077 == 0
    assert not any(p.name.startswith("ca-key") for p in tmp_path.iterdir())
    # The chain verifies against the lab CA with strict X.509 checks (as Python 3.13 does by default).
    client = ssl.create_default_context(cafile=paths.ca_cert)
    client.verify_flags |= ssl.VERIFY_X509_STRICT
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(paths.server_cert, paths.server_key)
    assert _handshake(client, server, "e5.whatsapp.net") == "TLSv1.3"
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        _handshake(client, server, "telegram.org")


def _handshake(client: ssl.SSLContext, server: ssl.SSLContext, sni: str) -> str | None:
    """A TLS handshake in memory (no sockets); returns the version agreed."""
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    client_conn = client.wrap_bio(client_in, client_out, server_hostname=sni)
    server_conn = server.wrap_bio(server_in, server_out, server_side=True)
    for _ in range(10):
        for conn in (client_conn, server_conn):
            try:
                conn.do_handshake()
            except ssl.SSLWantReadError:
                pass
        server_in.write(client_out.read())
        client_in.write(server_out.read())
    return client_conn.version()
