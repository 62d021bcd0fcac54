"""Helper run inside the test namespaces: servers (svc side) and client probes.

Usage: python nsagent.py serve
       python nsagent.py tls HOST PORT SNI       -> {"result": "reply"|"reset"|"timeout"|...}
       python nsagent.py chat HOST PORT
       python nsagent.py udp HOST PORT
       python nsagent.py dns RESOLVER QNAME      -> {"answers": [[addresses...], ...]} in arrival order
       python nsagent.py bulk HOST PORT BYTES    -> {"sent": n, "seconds": s}
       python nsagent.py garbage DST             -> sends malformed IPv4/TCP packets through the router
       python nsagent.py raw HOST PORT TIMEOUT HEX...   -> {"results": [...]}: one TCP connection per payload, in parallel
       python nsagent.py udpraw HOST PORT TIMEOUT SPORT HEX...  -> {"results": [...]}: one datagram per payload
       python nsagent.py download HOST PORT BYTES -> {"received": n, "seconds": s} (server -> client bulk)
       python nsagent.py udprtt HOST PORT COUNT  -> {"rtts": [seconds...]}
       python nsagent.py invalid KIND DST DPORT COUNT SPORT PROBE_HOST PROBE_PORT
                                                 -> {"sent": n, "seconds": s, "probe": {...}}: COUNT crafted packets
                                                    conntrack holds INVALID, with one TCP probe opened mid-burst
Every client command prints one JSON line; all waits are bounded.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2] / "src"))

from wallwatch.protocols import dns, tls, whatsapp  # noqa: E402

# 8080: HTTP keyword; 1194: OpenVPN over TCP; 9001: tor's ORPort; 5202/5203: throttled/free bulk.
TCP_SERVERS = [("198.19.2.3", 443), ("198.19.2.2", 443), ("198.19.1.1", 5222), ("198.19.2.2", 5201),
               ("198.19.2.2", 8080), ("198.19.2.2", 1194), ("198.19.2.2", 9001), ("198.19.2.2", 5202),
               ("198.19.2.2", 5203)]
# A bulk source: reads "BYTES\n" and sends that many bytes back (download direction).
DOWNLOAD_SERVERS = [("198.19.2.2", 5204), ("198.19.2.2", 5205)]
UDP_ECHO = [("198.19.3.1", 3478), ("198.19.3.2", 3478), ("198.19.2.2", 1194), ("198.19.2.2", 51820),
            ("198.19.2.2", 443)]
RESOLVER = ("198.19.0.53", 53)
REAL_ANSWER = "198.19.1.1"
TIMEOUT = 3.0


def serve() -> None:
    for address in TCP_SERVERS:
        sock = socket.create_server(address, reuse_port=True)
        threading.Thread(target=_accept_loop, args=(sock,), daemon=True).start()
    for address in DOWNLOAD_SERVERS:
        sock = socket.create_server(address, reuse_port=True)
        threading.Thread(target=_accept_loop, args=(sock, _send_bulk), daemon=True).start()
    for address in UDP_ECHO:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(address)
        threading.Thread(target=_udp_echo, args=(sock,), daemon=True).start()
    dns_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dns_sock.bind(RESOLVER)
    threading.Thread(target=_dns_loop, args=(dns_sock,), daemon=True).start()
    print("ready", flush=True)
    while True:
        time.sleep(3600)


def _accept_loop(sock: socket.socket, handler=None) -> None:  # type: ignore[no-untyped-def]
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=handler or _echo_first, args=(conn,), daemon=True).start()


def _send_bulk(conn: socket.socket) -> None:
    conn.settimeout(30)
    try:
        wanted = int(conn.recv(64).split(b"\n")[0])
        chunk = b"\xa5" * 65536
        while wanted > 0:
            conn.sendall(chunk[:wanted])
            wanted -= len(chunk)
    except (OSError, ValueError):
        pass
    finally:
        conn.close()


def _echo_first(conn: socket.socket) -> None:
    """Answer the first bytes with 'ok', then swallow the rest (a bulk sink)."""
    conn.settimeout(30)
    try:
        if conn.recv(65536):
            conn.sendall(b"ok")
            while conn.recv(1 << 20):
                pass
    except OSError:
        pass
    finally:
        conn.close()


def _udp_echo(sock: socket.socket) -> None:
    while True:
        data, peer = sock.recvfrom(4096)
        sock.sendto(data, peer)


def _dns_loop(sock: socket.socket) -> None:
    while True:
        data, peer = sock.recvfrom(4096)
        try:
            sock.sendto(dns.build_response(data, [REAL_ANSWER]), peer)
        except Exception:  # noqa: BLE001 - a test server ignores bad queries
            pass


def _stream_probe(host: str, port: int, first_bytes: bytes, timeout: float = TIMEOUT) -> dict[str, object]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect((host, port))
    except TimeoutError:
        return {"result": "connect_timeout"}
    except OSError as exc:
        return {"result": "connect_error", "errno": exc.errno}
    try:
        sock.sendall(first_bytes)
        reply = sock.recv(100)
        return {"result": "reply" if reply == b"ok" else "closed", "data": reply.decode(errors="replace")}
    except ConnectionResetError:
        return {"result": "reset"}
    except TimeoutError:
        return {"result": "timeout"}
    finally:
        sock.close()


def udp_probe(host: str, port: int) -> dict[str, object]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(1.5)
    sock.sendto(b"\x00\x01ping", (host, port))
    try:
        data, _ = sock.recvfrom(4096)
        return {"result": "reply" if data == b"\x00\x01ping" else "other"}
    except TimeoutError:
        return {"result": "timeout"}


def dns_probe(resolver: str, qname: str) -> dict[str, object]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(1.0)
    query_id = 0x1234
    sock.sendto(dns.build_query(qname, "A", query_id=query_id), (resolver, 53))
    answers = []
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline and len(answers) < 3:
        try:
            data, peer = sock.recvfrom(4096)
        except TimeoutError:
            break
        facts = dns.parse_dns(data)
        if peer == (resolver, 53) and facts.id == query_id:
            answers.append(list(facts.addresses))
    return {"answers": answers}


def bulk(host: str, port: int, total: int) -> dict[str, object]:
    sock = socket.create_connection((host, port), timeout=10)
    chunk = b"\xa5" * 65536
    start = time.monotonic()
    sent = 0
    sock.sendall(b"bulk")
    sock.recv(2)
    while sent < total:
        sock.sendall(chunk)
        sent += len(chunk)
    sock.shutdown(socket.SHUT_WR)
    sock.recv(10)
    return {"sent": sent, "seconds": time.monotonic() - start}


def _parallel(function, items: list) -> list:  # type: ignore[no-untyped-def]
    results: list = [None] * len(items)

    def run(index: int) -> None:
        results[index] = function(items[index])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(items))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def raw_many(host: str, port: int, timeout: float, payloads: list[bytes]) -> dict[str, object]:
    return {"results": _parallel(lambda data: _stream_probe(host, port, data, timeout), payloads)}


def _udp_once(host: str, port: int, timeout: float, sport: int, payload: bytes) -> dict[str, object]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    try:
        sock.bind(("0.0.0.0", sport))
        sock.sendto(payload, (host, port))
        data, _ = sock.recvfrom(65536)
        return {"result": "reply" if data == payload else "other"}
    except TimeoutError:
        return {"result": "timeout"}
    finally:
        sock.close()


def udp_many(host: str, port: int, timeout: float, sport: int, payloads: list[bytes]) -> dict[str, object]:
    """One socket per payload; SPORT 0 = any port, else SPORT, SPORT+1, ..."""
    items = [(sport + i if sport else 0, data) for i, data in enumerate(payloads)]
    return {"results": _parallel(lambda item: _udp_once(host, port, timeout, *item), items)}


def download(host: str, port: int, total: int) -> dict[str, object]:
    sock = socket.create_connection((host, port), timeout=30)
    start = time.monotonic()
    sock.sendall(f"{total}\n".encode())
    received = 0
    while received < total:
        data = sock.recv(1 << 20)
        if not data:
            break
        received += len(data)
    sock.close()
    return {"received": received, "seconds": time.monotonic() - start}


def udp_rtt(host: str, port: int, count: int) -> dict[str, object]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(3.0)
    rtts = []
    for i in range(count):
        payload = f"rtt{i}".encode()
        start = time.monotonic()
        sock.sendto(payload, (host, port))
        try:
            while sock.recvfrom(4096)[0] != payload:
                pass
            rtts.append(time.monotonic() - start)
        except TimeoutError:
            rtts.append(None)
    return {"rtts": rtts}


def garbage(dst: str) -> dict[str, object]:
    """Malformed packets: a TCP header cut to 10 bytes, and a bad TCP data offset."""
    import struct

    from wallwatch.protocols import inet

    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sent = 0
    for l4 in (b"\x9c\x40\x01\xbb" + b"\x00" * 6, struct.pack("!HHIIBBHHH", 40000, 443, 1, 0, 0x10, 0x02, 0, 0, 0)):
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0, 64, 6, 0,
                             socket.inet_aton("198.18.0.2"), socket.inet_aton(dst))
        header = header[:10] + struct.pack("!H", inet.internet_checksum(header)) + header[12:]
        sock.sendto(header + l4, (dst, 0))
        sent += 1
    return {"sent": sent}


# Packets conntrack holds INVALID (nf_conntrack_proto_tcp.c: tcp_valid_flags, tcp_error's checksum
# check, and the state table's sIV for a RST or FIN with no connection; udp_error's checksum check).
INVALID_KINDS = ("rst", "finack", "synfin", "noflags", "badtcp", "badudp", "late-rst")


def invalid_packets(kind: str, dst: str, dport: int, count: int, sport: int) -> list[bytes]:
    """`count` crafted packets of one INVALID kind from the client. Source ports run from
    `sport` over up to 20,000 values (so the censor would see as many flows), except
    `late-rst`: every RST on the one 5-tuple the caller opened before with kind `syn` (a plain
    SYN, not INVALID: the flow's opening, which conntrack then forgets)."""
    from wallwatch.protocols import inet

    flags = {"rst": inet.RST, "finack": inet.FIN | inet.ACK, "synfin": inet.SYN | inet.FIN, "noflags": 0,
             "badtcp": inet.PSH | inet.ACK, "late-rst": inet.RST, "syn": inet.SYN}
    packets = []
    for i in range(count):
        port = sport if kind in ("late-rst", "syn") else sport + i % 20000
        if kind == "badudp":
            packet = bytearray(inet.build_udp("198.18.0.2", dst, port, dport, b"x" * 16))
            packet[26] ^= 0xFF  # the UDP checksum (20-byte IPv4 header + 6)
        else:
            payload = b"x" * 16 if kind == "badtcp" else b""
            packet = bytearray(inet.build_tcp("198.18.0.2", dst, port, dport, seq=1000 + 7919 * i, ack=1,
                                              flags=flags[kind], window=512, payload=payload))
            if kind == "badtcp":
                packet[36] ^= 0xFF  # the TCP checksum (20-byte IPv4 header + 16)
        packets.append(bytes(packet))
    return packets


def invalid_burst(kind: str, dst: str, dport: int, count: int, sport: int,
                  probe_host: str, probe_port: int) -> dict[str, object]:
    """Send the crafted packets as fast as a raw socket takes them; when half are out, open a
    TCP connection (in a thread) and time it to its reply: a new connection during the burst."""
    packets = invalid_packets(kind, dst, dport, count, sport)
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    probe: dict[str, object] = {}

    def timed_probe() -> None:
        start = time.monotonic()
        probe.update(_stream_probe(probe_host, probe_port, b"hello", timeout=3.0))
        probe["seconds"] = time.monotonic() - start

    thread = threading.Thread(target=timed_probe)
    start = time.monotonic()
    sent = 0
    for index, packet in enumerate(packets):
        if index == len(packets) // 2:
            thread.start()
        try:
            sock.sendto(packet, (dst, 0))
            sent += 1
        except OSError:  # ENOBUFS: the sender outran its own queue; the count says so
            pass
    seconds = time.monotonic() - start
    thread.join(10)
    return {"sent": sent, "seconds": seconds, "probe": probe}


def main(argv: list[str]) -> None:
    command, args = argv[0], argv[1:]
    if command == "serve":
        serve()
        return
    if command == "tls":
        result = _stream_probe(args[0], int(args[1]), tls.build_client_hello(args[2]))
    elif command == "chat":
        client = whatsapp.ChatClient()
        client.initiate()
        result = _stream_probe(args[0], int(args[1]), client.data_to_send())
    elif command == "udp":
        result = udp_probe(args[0], int(args[1]))
    elif command == "dns":
        result = dns_probe(args[0], args[1])
    elif command == "bulk":
        result = bulk(args[0], int(args[1]), int(args[2]))
    elif command == "garbage":
        result = garbage(args[0])
    elif command == "raw":
        result = raw_many(args[0], int(args[1]), float(args[2]), [bytes.fromhex(h) for h in args[3:]])
    elif command == "udpraw":
        result = udp_many(args[0], int(args[1]), float(args[2]), int(args[3]), [bytes.fromhex(h) for h in args[4:]])
    elif command == "download":
        result = download(args[0], int(args[1]), int(args[2]))
    elif command == "udprtt":
        result = udp_rtt(args[0], int(args[1]), int(args[2]))
    elif command == "invalid":
        result = invalid_burst(args[0], args[1], int(args[2]), int(args[3]), int(args[4]), args[5], int(args[6]))
    else:
        raise SystemExit(f"unknown command {command}")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
