"""Client-side checks, run inside the lab's client namespace by the lab tests.

    python tests/lab/client_checks.py <check> [args...]   (prints one JSON object)

Reads the lab state from $WALLWATCH_LAB exactly as the probe does (resolver,
CA certificate), resolves names through the lab resolver and dials what it
answers, so a check exercises the whole path: DNS, routing through the censor
namespace, and the emulated service.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import ssl
import struct
import sys
from typing import Any

from wallwatch.protocols.dns import build_query, parse_dns
from wallwatch.protocols.errors import ProtocolError
from wallwatch.protocols.stun import build_binding_request, parse_stun
from wallwatch.protocols.whatsapp import ChatClient, HandshakeComplete, MessageReceived

TIMEOUT = 10.0
STATE: dict[str, Any] = json.loads(open(os.environ["WALLWATCH_LAB"]).read())


def resolve(name: str, *, tcp: bool = False, qtype: str = "A") -> dict[str, Any]:
    query = build_query(name, qtype)
    if tcp:
        with socket.create_connection((STATE["resolver"], 53), TIMEOUT) as sock:
            sock.sendall(struct.pack("!H", len(query)) + query)
            length = struct.unpack("!H", _recv_exactly(sock, 2))[0]
            response = _recv_exactly(sock, length)
    else:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(TIMEOUT)
            sock.sendto(query, (STATE["resolver"], 53))
            response = sock.recv(4096)
    facts = parse_dns(response)
    return {"rcode": facts.rcode, "addresses": list(facts.addresses), "qname": facts.qname}


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed early")
        data += chunk
    return data


def _address(name: str) -> str:
    answer = resolve(name)
    if not answer["addresses"]:
        raise SystemExit(f"{name}: {answer['rcode']}")
    return answer["addresses"][0]


class LabHTTPSConnection(http.client.HTTPSConnection):
    """Dial the address the lab resolver gave, with the name as SNI and for verification."""

    def __init__(self, name: str, address: str, context: ssl.SSLContext) -> None:
        super().__init__(name, 443, context=context, timeout=TIMEOUT)
        self._lab_address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._lab_address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def _lab_context() -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=STATE["ca_cert"])  # the lab CA only, never the system store
    context.set_alpn_protocols(["http/1.1"])
    return context


def https(method: str, name: str, path: str, body_size: str = "0") -> dict[str, Any]:
    connection = LabHTTPSConnection(name, _address(name), _lab_context())
    body = os.urandom(int(body_size)) if int(body_size) else None
    connection.request(method, path, body=body)
    response = connection.getresponse()
    data = response.read()
    tls = connection.sock
    result = {
        "status": response.status,
        "content_type": response.getheader("content-type"),
        "length": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "tls_version": tls.version(),
        "alpn": tls.selected_alpn_protocol(),
        "peer_names": [value for kind, value in tls.getpeercert().get("subjectAltName", ()) if kind == "DNS"],
    }
    if body is not None:
        result["sent_sha256"] = hashlib.sha256(body).hexdigest()
    if response.getheader("content-type", "").startswith(("application/json", "text/")):
        result["text"] = data.decode()
    connection.close()
    return result


def media_round_trip(size: str) -> dict[str, Any]:
    """Upload a photo-sized body, then download it by the id the server returned."""
    name = "mmg.whatsapp.net"
    context = _lab_context()
    address = _address(name)
    photo = os.urandom(int(size))
    upload = LabHTTPSConnection(name, address, context)
    upload.request("POST", "/upload", body=photo, headers={"Content-Type": "image/jpeg"})
    receipt = json.loads(upload.getresponse().read())
    upload.close()
    download = LabHTTPSConnection(name, address, context)
    download.request("GET", f"/d/{receipt['id']}")
    response = download.getresponse()
    data = response.read()
    download.close()
    return {"receipt": receipt, "status": response.status, "same": data == photo, "length": len(data)}


def tls_untrusted(name: str) -> dict[str, Any]:
    """Handshake with the system trust store instead: must fail (the lab CA is trusted only in lab mode)."""
    context = ssl.create_default_context()
    try:
        with socket.create_connection((_address(name), 443), TIMEOUT) as sock:
            with context.wrap_socket(sock, server_hostname=name):
                return {"verified": True}
    except ssl.SSLCertVerificationError as exc:
        return {"verified": False, "error": exc.verify_message}


def chat(name: str, port: str, edge: str = "no") -> dict[str, Any]:
    client = ChatClient(edge_routing=b"\x08\x08lab" if edge == "edge" else None)
    messages = [b"hello", os.urandom(3000)]
    echoed: list[bytes] = []
    handshake = False
    with socket.create_connection((_address(name), int(port)), TIMEOUT) as sock:
        client.initiate()
        sock.sendall(client.data_to_send())
        while len(echoed) < len(messages):
            data = sock.recv(65536)
            if not data:
                break
            for event in client.receive_data(data):
                if isinstance(event, HandshakeComplete):
                    handshake = True
                    for message in messages:
                        client.send_message(message)
                elif isinstance(event, MessageReceived):
                    echoed.append(event.plaintext)
            sock.sendall(client.data_to_send())
    return {"handshake": handshake, "echoed_all": echoed == messages, "echoed": len(echoed)}


def chat_garbage(name: str, port: str) -> dict[str, Any]:
    """Bytes that are not WhatsApp: the server must close with a FIN, not a RST or silence."""
    with socket.create_connection((_address(name), int(port)), TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: e1.whatsapp.net\r\n\r\n")
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return {"closed": "reset"}
        return {"closed": "fin" if data == b"" else "data", "bytes": len(data)}


def stun(address: str) -> dict[str, Any]:
    txid = os.urandom(12)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.bind(("0.0.0.0", 0))
        sock.sendto(b"not stun", (address, 3478))  # ignored by the relay, must not break it
        sock.sendto(build_binding_request(txid), (address, 3478))
        response = parse_stun(sock.recv(2048))
        local_port = sock.getsockname()[1]
    return {
        "class": response.stun_class,
        "txid_matches": response.transaction_id == txid,
        "mapped": list(response.mapped_address or ()),
        "local_port": local_port,
    }


CHECKS = {
    "dns": lambda name, transport="udp", qtype="A": resolve(name, tcp=transport == "tcp", qtype=qtype),
    "https": https,
    "media": media_round_trip,
    "tls-untrusted": tls_untrusted,
    "chat": chat,
    "chat-garbage": chat_garbage,
    "stun": stun,
}

if __name__ == "__main__":
    try:
        print(json.dumps(CHECKS[sys.argv[1]](*sys.argv[2:])))
    except (OSError, ProtocolError) as exc:
        print(json.dumps({"error": f"{exc.__class__.__name__}: {exc}"}))
