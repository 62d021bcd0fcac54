"""Every emulated service of the lab "internet", in one asyncio process.

Run in the services namespace by `Lab.up`:

    python -m wallwatch.lab.services --workdir DIR

It reads the lab certificate from DIR/certs, binds each service only on its
own lab address (wallwatch.lab.addresses), then writes DIR/services-ready.json
so the lab knows every listener is up. SIGTERM/SIGINT stop it.

One process, because the services are idle almost all the time and asyncio
serves ~40 listeners on one core without the start-up cost of one process each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

from wallwatch.lab import addresses
from wallwatch.lab.app_servers import (
    StunRelay,
    ViberRelay,
    serve_apns_courier,
    serve_mmtls_long_link,
    serve_mqtt,
    serve_mtproto_dc,
    serve_viber_chat,
    short_link_handler,
)
from wallwatch.lab.chat_platform import FILTER_FILE, ChatPlatform
from wallwatch.lab.dns_server import start_dns
from wallwatch.lab.https_server import (
    Handler,
    MediaStore,
    registration_handler,
    serve_http_connection,
    server_ssl_context,
    site_handler,
    start_https,
    web_handler,
)
from wallwatch.lab.websites import start_sites
from wallwatch.protocols import apns
from wallwatch.protocols.errors import ProtocolError
from wallwatch.protocols.whatsapp import ChatServer, MessageReceived, generate_static_key

log = logging.getLogger("wallwatch.lab.services")

READY_FILE = "services-ready.json"
HELPER_READY_FILE = "helper-ready.json"
HELPER_START_TIMEOUT = 20.0  # it imports the probe's primitives and typer: a second or two on a busy box
# The helper's per-step bound: the sink (addresses.SINK) never answers, and a probe waits for the
# helper at most 6 x its own step, so 2 s keeps lab runs short and the helper's answer in time.
HELPER_STEP_TIMEOUT = 2.0
CHAT_IDLE_TIMEOUT = 60.0  # a chat client that says nothing for a minute is gone
CLOSE_DRAIN_TIMEOUT = 1.0  # how long to read the peer's leftovers before closing
# Closing a socket with unread bytes makes Linux send RST (RFC 1122 §4.2.2.13);
# reading what the peer still sends, for a bounded time, lets the close be a FIN.


async def _close_cleanly(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(CLOSE_DRAIN_TIMEOUT):
            while await reader.read(65536):
                pass
    except (TimeoutError, ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def serve_chat_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, static_private: bytes
) -> None:
    """The WhatsApp chat transport: header, Noise XX, then echo every message back."""
    server = ChatServer(static_private=static_private)
    try:
        while True:
            data = await asyncio.wait_for(reader.read(65536), CHAT_IDLE_TIMEOUT)
            if not data:
                break
            try:
                events = server.receive_data(data)
            except ProtocolError as exc:
                log.info("chat: closing a connection that is not WhatsApp: %s", exc)
                break
            for event in events:
                if isinstance(event, MessageReceived):
                    server.send_message(event.plaintext)
            outgoing = server.data_to_send()
            if outgoing:
                writer.write(outgoing)
                await writer.drain()
    except (asyncio.TimeoutError, ConnectionError, OSError):
        writer.close()
        return
    await _close_cleanly(reader, writer)


async def start_services(workdir: Path) -> list[object]:
    """Bind every service; returns the servers/transports to close."""
    loop = asyncio.get_running_loop()
    certs = workdir / "certs"
    context = server_ssl_context(certs / "server.pem", certs / "server-key.pem")
    handles: list[object] = []

    handles += await start_dns(addresses.RESOLVER, addresses.NAMES)

    for name, address in addresses.CHAT_SERVERS.items():
        key = generate_static_key()  # one static Noise key per server, like a real fleet

        async def on_chat(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: bytes = key) -> None:
            await serve_chat_connection(reader, writer, key)

        for port in addresses.CHAT_PORTS:
            handles.append(await asyncio.start_server(on_chat, address, port))

    media = MediaStore()
    handlers = {
        addresses.REGISTRATION: registration_handler,
        addresses.WEB: web_handler,
        addresses.MEDIA: media.handle,
    }
    for name, handler in handlers.items():
        handles.append(await start_https(addresses.HTTPS_SERVICES[name], handler, context, addresses.HTTPS_PORT))

    for relay in addresses.CALL_RELAYS:
        transport, _ = await loop.create_datagram_endpoint(StunRelay, local_addr=(relay, addresses.STUN_PORT))
        handles.append(transport)
    handles += await _start_other_services(context)
    handles += await _start_2017_services(certs)
    platform = ChatPlatform(workdir / FILTER_FILE)
    for address in addresses.CHAT_PLATFORMS.values():
        handles.append(await start_https(address, platform.handle, context, addresses.HTTPS_PORT))
    handles += await start_sites(context)
    return handles


def start_helper(workdir: Path) -> subprocess.Popen[bytes]:
    """`wallwatch helper serve`, the web_connectivity test helper, beside the services: outside the
    censor, asking the lab's resolver, trusting the lab CA, dialling nothing off the lab's internet.
    A child of this process, in its process group: stopping the services stops it."""
    certs = workdir / "certs"
    argv = [sys.executable, "-m", "wallwatch.cli", "helper", "serve",
            "--listen", f"{addresses.TEST_HELPER}:{addresses.HTTPS_PORT}",
            "--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server-key.pem"),
            "--resolver", addresses.RESOLVER, "--ca-file", str(certs / "ca.pem"),
            "--network", addresses.INTERNET_BLOCK, "--timeout", str(HELPER_STEP_TIMEOUT),
            "--ready-file", str(workdir / HELPER_READY_FILE)]
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL)


def await_helper(workdir: Path, helper: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + HELPER_START_TIMEOUT
    while not (workdir / HELPER_READY_FILE).exists():
        if helper.poll() is not None:
            raise RuntimeError(f"the test helper exited with {helper.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the test helper was not ready within {HELPER_START_TIMEOUT:.0f} s")
        time.sleep(0.05)


async def _start_other_services(context: "ssl.SSLContext") -> list[object]:
    """Telegram's DCs, Messenger's MQTT edge, every HTTPS site and STUN server of docs/services.md."""
    loop = asyncio.get_running_loop()
    handles: list[object] = []
    for dc in addresses.TELEGRAM_DCS.values():
        for port in addresses.TELEGRAM_DC_PORTS:
            handles.append(await asyncio.start_server(serve_mtproto_dc, dc, port))
    for address in addresses.MQTT_TLS_SERVERS.values():
        handles.append(await asyncio.start_server(serve_mqtt, address, addresses.HTTPS_PORT, ssl=context))
    for host, address in addresses.HTTPS_SITES.items():
        handler: Handler = MediaStore().handle if host in addresses.MEDIA_SITES else site_handler(host)
        handles.append(await start_https(address, handler, context, addresses.HTTPS_PORT))
    for address in dict.fromkeys(addresses.STUN_SERVERS.values()):
        transport, _ = await loop.create_datagram_endpoint(StunRelay, local_addr=(address, addresses.STUN_PORT))
        handles.append(transport)
    return handles


async def _start_2017_services(certs: Path) -> list[object]:
    """WeChat's long and short links, Viber's chat and call relay, Apple's push courier, the relays of
    WeChat, Skype and FaceTime calls (docs/services.md)."""
    loop = asyncio.get_running_loop()
    handles: list[object] = []
    for address in addresses.MMTLS_LONG_LINKS.values():
        handles.append(await asyncio.start_server(serve_mmtls_long_link, address, addresses.MMTLS_LONG_LINK_PORT))

    async def on_short_link(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_http_connection(reader, writer, short_link_handler)  # plain HTTP, as the app sends it

    for address in addresses.MMTLS_SHORT_LINKS.values():
        handles.append(await asyncio.start_server(on_short_link, address, addresses.MMTLS_SHORT_LINK_PORT))
    for address in addresses.VIBER_CHAT_SERVERS.values():
        for port in addresses.VIBER_CHAT_PORTS:
            handles.append(await asyncio.start_server(serve_viber_chat, address, port))
    for address in addresses.VIBER_CALL_RELAYS.values():
        transport, _ = await loop.create_datagram_endpoint(ViberRelay, local_addr=(address, addresses.VIBER_CALL_PORT))
        handles.append(transport)
    courier = server_ssl_context(certs / "server.pem", certs / "server-key.pem", alpn=(apns.ALPN,))
    for address in addresses.APNS_COURIERS.values():
        handles.append(await asyncio.start_server(serve_apns_courier, address, addresses.APNS_PORT, ssl=courier))
    for address in addresses.SERVICE_RELAYS.values():
        transport, _ = await loop.create_datagram_endpoint(StunRelay, local_addr=(address, addresses.STUN_PORT))
        handles.append(transport)
    return handles


def _write_ready(workdir: Path) -> None:
    ready = {
        "pid": os.getpid(),
        "resolver": addresses.RESOLVER,
        "chat": {name: [address, list(addresses.CHAT_PORTS)] for name, address in addresses.CHAT_SERVERS.items()},
        "https": dict(addresses.HTTPS_SERVICES),
        "call_relays": [[relay, addresses.STUN_PORT] for relay in addresses.CALL_RELAYS],
        "telegram_dcs": {lab: [real, list(addresses.TELEGRAM_DC_PORTS)] for real, lab in addresses.TELEGRAM_DCS.items()},
        "https_sites": dict(addresses.HTTPS_SITES),
        "mqtt_tls": dict(addresses.MQTT_TLS_SERVERS),
        "stun": dict(addresses.STUN_SERVERS),
        "mmtls": {"long_link": [dict(addresses.MMTLS_LONG_LINKS), addresses.MMTLS_LONG_LINK_PORT],
                  "short_link": [dict(addresses.MMTLS_SHORT_LINKS), addresses.MMTLS_SHORT_LINK_PORT]},
        "viber": {"chat": [dict(addresses.VIBER_CHAT_SERVERS), list(addresses.VIBER_CHAT_PORTS)],
                  "calls": [dict(addresses.VIBER_CALL_RELAYS), addresses.VIBER_CALL_PORT]},
        "apns": [dict(addresses.APNS_COURIERS), addresses.APNS_PORT],
        "relays": dict(addresses.SERVICE_RELAYS),
        "chat_platforms": dict(addresses.CHAT_PLATFORMS),
        "web_sites": {host: [address, list(addresses.WEB_PORTS)] for host, address in addresses.WEB_SITES.items()},
        "test_helper": addresses.TEST_HELPER_URL,
    }
    tmp = workdir / (READY_FILE + ".tmp")
    tmp.write_text(json.dumps(ready, indent=2))
    os.replace(tmp, workdir / READY_FILE)


async def run(workdir: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    helper = start_helper(workdir)  # first: its start-up overlaps ours
    try:
        handles = await start_services(workdir)
        await loop.run_in_executor(None, await_helper, workdir, helper)
        _write_ready(workdir)
        log.info("ready: %d listeners and the test helper", len(handles))
        await stop.wait()
        for handle in handles:
            handle.close()  # type: ignore[attr-defined]
    finally:
        helper.terminate()
        try:
            helper.wait(timeout=5)
        except subprocess.TimeoutExpired:
            helper.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wallwatch.lab.services", description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, required=True, help="lab work directory (certs/ inside)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(run(args.workdir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
