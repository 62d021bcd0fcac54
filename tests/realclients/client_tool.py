"""Client-side actions for the real-client tests, run inside the lab's client namespace.

    python client_tool.py socks-get --socks 127.0.0.1:1080 --target 198.19.4.10:80 --count 40 [--username-hex H --password-hex H]
    python client_tool.py http-get --target 198.19.4.10:80 --count 20
    python client_tool.py tls-get --target 198.19.2.2:443 --sni web.whatsapp.com --ca ca.pem --count 20
    python client_tool.py telethon --dc 198.19.4.5:443

Prints one JSON object: per-connection outcomes (`results`) or Telethon's.
Every step has a timeout; connections run a few at a time (`--parallel`).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import ssl
import struct
import sys
import time
from typing import Any

EXPECTED_BODY = b"wallwatch real-clients backend: ok"


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def _request(host: str) -> bytes:
    return f"GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: wallwatch-realclients\r\nConnection: close\r\n\r\n".encode()


async def _socks5_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: tuple[str, int],
                          username: bytes | None, password: bytes | None) -> None:
    """RFC 1928 CONNECT to an IPv4 target, with RFC 1929 username/password when given."""
    method = 0x02 if username is not None else 0x00
    writer.write(bytes([5, 1, method]))
    reply = await reader.readexactly(2)
    if reply != bytes([5, method]):
        raise ConnectionError(f"SOCKS method refused: {reply.hex()}")
    if username is not None and password is not None:
        writer.write(bytes([1, len(username)]) + username + bytes([len(password)]) + password)
        if (await reader.readexactly(2))[1] != 0:
            raise ConnectionError("SOCKS authentication refused")
    address = ipaddress.IPv4Address(target[0]).packed
    writer.write(bytes([5, 1, 0, 1]) + address + struct.pack("!H", target[1]))
    reply = await reader.readexactly(10)
    if reply[1] != 0:
        raise ConnectionError(f"SOCKS CONNECT failed with reply {reply[1]}")


async def _one(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    target = _host_port(args.target)
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(args.timeout):
            if kind == "socks-get":
                reader, writer = await asyncio.open_connection(*_host_port(args.socks))
                # hex on the command line: obfs4's SOCKS password can be a NUL byte (pt-spec.txt §3.5)
                user = bytes.fromhex(args.username_hex) if args.username_hex is not None else None
                password = bytes.fromhex(args.password_hex) if args.password_hex is not None else None
                await _socks5_connect(reader, writer, target, user, password)
            elif kind == "tls-get":
                context = ssl.create_default_context(cafile=args.ca)
                reader, writer = await asyncio.open_connection(*target, ssl=context, server_hostname=args.sni)
            else:
                reader, writer = await asyncio.open_connection(*target)
            writer.write(_request(args.sni or target[0]))
            response = await reader.read(-1)
        ok = response.startswith(b"HTTP/1.1 ") and (kind == "tls-get" or EXPECTED_BODY in response)
        return {"ok": ok, "status": response[:12].decode("latin-1"), "seconds": round(time.monotonic() - started, 3)}
    except (TimeoutError, OSError, ConnectionError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
        return {"ok": False, "error": f"{exc.__class__.__name__}: {exc}", "seconds": round(time.monotonic() - started, 3)}
    finally:
        if writer is not None:
            writer.close()


async def _many(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    if args.stop_after_failures:
        return await _until_failures(kind, args)
    gate = asyncio.Semaphore(args.parallel)

    async def gated() -> dict[str, Any]:
        async with gate:
            return await _one(kind, args)

    results = await asyncio.gather(*(gated() for _ in range(args.count)))
    return {"results": list(results), "ok": sum(r["ok"] for r in results), "failed": sum(not r["ok"] for r in results)}


async def _until_failures(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """One connection at a time, stopping after `--stop-after-failures` failures (penalty-box tests)."""
    results: list[dict[str, Any]] = []
    while len(results) < args.count and sum(not r["ok"] for r in results) < args.stop_after_failures:
        results.append(await _one(kind, args))
    return {"results": results, "ok": sum(r["ok"] for r in results), "failed": sum(not r["ok"] for r in results)}


async def _telethon(args: argparse.Namespace) -> dict[str, Any]:
    """Telethon's obfuscated transport to the emulated DC; no real Telegram address is dialled."""
    from telethon import TelegramClient
    from telethon.network import ConnectionTcpObfuscated
    from telethon.sessions import StringSession

    host, port = _host_port(args.dc)
    if ipaddress.ip_address(host) not in ipaddress.ip_network("198.18.0.0/15"):
        raise SystemExit(f"refusing to dial {host}: not a lab address")
    client = TelegramClient(StringSession(), api_id=1, api_hash="0" * 32, connection=ConnectionTcpObfuscated,
                            timeout=args.timeout, connection_retries=0, retry_delay=0, auto_reconnect=False,
                            receive_updates=False)
    client.session.set_dc(2, host, port)  # the session decides where to connect: only here
    started = time.monotonic()
    try:
        await asyncio.wait_for(client.connect(), args.timeout + 1)
        outcome = "connected"
    except (TimeoutError, asyncio.TimeoutError):
        outcome = "TimeoutError"
    except (ConnectionError, OSError) as exc:
        outcome = f"{exc.__class__.__name__}: {exc}"
    finally:
        try:
            await asyncio.wait_for(client.disconnect(), 3)
        except BaseException:  # noqa: BLE001 - best effort on a client that never connected
            pass
    return {"outcome": outcome, "seconds": round(time.monotonic() - started, 3)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["socks-get", "http-get", "tls-get", "telethon"])
    parser.add_argument("--target", default="0.0.0.0:0")
    parser.add_argument("--socks")
    parser.add_argument("--username-hex")
    parser.add_argument("--password-hex")
    parser.add_argument("--sni")
    parser.add_argument("--ca")
    parser.add_argument("--dc")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--stop-after-failures", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args()
    if args.kind == "telethon":
        result = asyncio.run(_telethon(args))
    else:
        result = asyncio.run(_many(args.kind, args))
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
