"""web_connectivity and its test helper on loopback: real sockets, a real helper, a censor stand-in.

The site listens on 127.0.0.1; the helper resolves and fetches it as it is. The
probe resolves the same name, but the address map makes it dial 127.0.0.5 (the
map stands in for an on-path censor: what answers there is what the censor
does), so each case is one stage of interference, and the probe's OONI keys
must name it the way probe-cli's classic analysis does.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.probe.servers import DnsServer, make_pki, reset_after_first_bytes, server_context, start_dns, start_tcp
from wallwatch.helper.measure import HelperConfig, parse_networks
from wallwatch.helper.server import start as start_helper
from wallwatch.probe.nettests import NETTESTS, TargetError
from wallwatch.probe.nettests import web_connectivity as wc
from wallwatch.probe.settings import ProbeSettings
from wallwatch.protocols import webconnectivity as th

SITE, CENSOR, HELPER = "127.0.0.1", "127.0.0.5", "127.0.0.2"
NAME = "site.example"
SITE_PAGE = ("<html><head><title>The Example Site Front Page</title></head><body>"
             + "<p>real content of the site</p>" * 120 + "</body></html>").encode()
BLOCK_PAGE = b"<html><head><title>Access restricted</title></head><body>no</body></html>"


def _responder(body: bytes, extra: tuple[tuple[str, str], ...] = (("X-Site", "1"),), *, length: bool = True):
    """One response per connection; without `length` the body ends where the connection does, as
    injected block pages often do (RFC 9112 §6.3)."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await reader.read(65536)
            if not chunk:
                return
            data += chunk
        head = "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n"
        head += f"Content-Length: {len(body)}\r\n" if length else ""
        head += "".join(f"{k}: {v}\r\n" for k, v in extra)
        writer.write(head.encode() + b"\r\n" + body)
        await writer.drain()
        writer.close()
    return handle


class World:
    """A site on SITE:port, what the censor stand-in serves on CENSOR:port, DNS, and the helper."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.servers: list[Any] = []
        self.censor_server: Any = None

    async def start(self, censor: Any | None, *, probe_dns_inject: str | None = None, tls: bool = False,
                    site_up: bool = True, censor_speaks_tls: bool = True) -> tuple[str, ProbeSettings, wc.WebConfig]:
        context = None
        pki = None
        if tls:
            pki = make_pki(self.tmp_path, [NAME])
            context = server_context(pki)
        site, port = await self._listen(SITE, _responder(SITE_PAGE), context)
        if not site_up:
            site.close()
        if censor is not None:
            self.censor_server, _ = await self._listen(CENSOR, censor, context if censor_speaks_tls else None, port)
        honest = await start_dns(DnsServer(names={NAME: SITE}))
        probe_dns = honest
        if probe_dns_inject:
            probe_dns = await start_dns(DnsServer(names={NAME: SITE}, inject={NAME: probe_dns_inject}))
        config = HelperConfig(resolver=(SITE, honest.port), ca_file=str(pki.ca_pem) if pki else None,
                              networks=parse_networks(["127.0.0.0/8"]), timeout=1.0)
        helper, _ = await start_helper(config, HELPER, 0)
        self.servers.append(helper)
        helper_url = f"http://{HELPER}:{helper.sockets[0].getsockname()[1]}/"
        # The map is the censor stand-in: the probe dials CENSOR for SITE when something answers there.
        mapping = {f"{SITE}/32": CENSOR if censor is not None else SITE, f"{HELPER}/32": HELPER,
                   "127.0.0.9/32": "127.0.0.9"}
        settings = ProbeSettings(resolver=(SITE, probe_dns.port), ca_file=str(pki.ca_pem) if pki else None,
                                 address_map=mapping)
        scheme = "https" if tls else "http"
        return f"{scheme}://{NAME}:{port}/", settings, wc.WebConfig(helper_url, timeouts=wc.Timeouts.scaled(1.0))

    async def _listen(self, host: str, handler: Any, context: Any, port: int = 0) -> tuple[Any, int]:
        server = await asyncio.start_server(handler, host, port, ssl=context)
        self.servers.append(server)
        return server, server.sockets[0].getsockname()[1]

    def close(self) -> None:
        for server in self.servers:
            server.close()


async def _measure(url: str, settings: ProbeSettings, config: wc.WebConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    await wc.measure_urls([url], config, settings, lambda u, keys, start, runtime: out.update(keys))
    return out


def _run(tmp_path: Path, censor: Any | None, **options: Any) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        world = World(tmp_path)
        try:
            url, settings, config = await world.start(censor, **options)
            return await _measure(url, settings, config)
        finally:
            world.close()
    return asyncio.run(go())


def _summary(keys: dict[str, Any]) -> tuple[Any, Any, Any]:
    return keys["blocking"], keys["accessible"], keys["dns_consistency"]


def test_an_unblocked_page_is_accessible_and_matches_the_control(tmp_path: Path) -> None:
    keys = _run(tmp_path, None)
    assert _summary(keys) == (False, True, "consistent")
    assert keys["control_failure"] is None and keys["control"]["http_request"]["title"] == "The Example Site Front Page"
    assert (keys["status_code_match"], keys["body_length_match"], keys["headers_match"], keys["title_match"]) == (
        True, True, True, True)
    assert keys["tcp_connect"][0]["status"] == {"success": True, "failure": None, "blocked": False}
    assert keys["requests"][0]["response"]["code"] == 200 and keys["queries"][0]["hostname"] == NAME


def test_a_different_page_in_the_sites_place_is_http_diff(tmp_path: Path) -> None:
    keys = _run(tmp_path, _responder(BLOCK_PAGE, extra=(), length=False))
    assert _summary(keys) == ("http-diff", False, "consistent")
    assert keys["status_code_match"] is True and keys["body_length_match"] is False
    assert keys["title_match"] is False and keys["headers_match"] is False


def test_a_reset_request_is_http_failure(tmp_path: Path) -> None:
    keys = _run(tmp_path, reset_after_first_bytes)
    assert _summary(keys) == ("http-failure", False, "consistent")
    assert keys["http_experiment_failure"] == "connection_reset"


def test_a_connect_the_control_makes_and_the_probe_cannot_is_tcp_ip(tmp_path: Path) -> None:
    async def never_listening(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pass

    async def go() -> dict[str, Any]:
        world = World(tmp_path)
        try:
            url, settings, config = await world.start(never_listening)
            world.censor_server.close()  # the stand-in refuses: the probe's connects fail, the helper's do not
            await world.censor_server.wait_closed()
            return await _measure(url, settings, config)
        finally:
            world.close()

    keys = asyncio.run(go())
    assert _summary(keys) == ("tcp_ip", False, "consistent")
    assert keys["tcp_connect"][0]["status"]["blocked"] is True


def test_a_forged_answer_is_dns_even_where_the_helper_cannot_connect_either(tmp_path: Path) -> None:
    keys = _run(tmp_path, None, probe_dns_inject="127.0.0.9")
    assert _summary(keys) == ("dns", False, "inconsistent")
    assert keys["queries"][0]["answers"][0]["ipv4"] == "127.0.0.9"
    assert keys["control"]["tcp_connect"][f"127.0.0.9:{keys['tcp_connect'][0]['port']}"]["status"] is False


def test_a_site_down_for_the_helper_too_is_down_not_blocked(tmp_path: Path) -> None:
    keys = _run(tmp_path, None, site_up=False)
    assert _summary(keys) == (False, False, "consistent")
    assert keys["control"]["http_request"]["failure"] == th.CONNECTION_REFUSED_ERROR


def test_https_reset_in_the_handshake_is_http_failure_and_success_is_accessible(tmp_path: Path) -> None:
    keys = _run(tmp_path, reset_after_first_bytes, tls=True, censor_speaks_tls=False)  # reset on the ClientHello
    assert _summary(keys) == ("http-failure", False, "consistent")
    assert keys["tls_handshakes"][0]["failure"] == "connection_reset"
    # The helper fetched the page over TLS (it handshakes on every endpoint only on port 443, as oohelperd).
    assert keys["control"]["http_request"]["status_code"] == 200
    ok = _run(tmp_path / "ok", None, tls=True)
    assert _summary(ok) == (False, True, "consistent")


def test_without_a_helper_nothing_is_concluded(tmp_path: Path) -> None:
    async def go() -> dict[str, Any]:
        world = World(tmp_path)
        try:
            url, settings, config = await world.start(reset_after_first_bytes)
            return await _measure(url, settings, wc.WebConfig(None, timeouts=config.timeouts))
        finally:
            world.close()

    keys = asyncio.run(go())
    assert keys["control_failure"].startswith("unknown_failure") and keys["control"] == {}
    assert (keys["blocking"], keys["accessible"]) == (None, None)


def test_inputs_run_concurrently_within_the_bound(tmp_path: Path) -> None:
    """Eight URLs to a site that takes 0.3 s each: one at a time ~2.4 s; four at a time ~0.6 s."""
    active, peak = 0, 0

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.3)
        active -= 1
        await _responder(BLOCK_PAGE)(reader, writer)

    async def go() -> dict[str, dict[str, Any]]:
        world = World(tmp_path)
        try:
            url, settings, config = await world.start(slow)
            urls = [f"{url}?page={n}" for n in range(8)]
            out: dict[str, dict[str, Any]] = {}
            bounded = wc.WebConfig(config.helper_url, parallelism=4, timeouts=config.timeouts)
            await wc.measure_urls(urls, bounded, settings, lambda u, keys, s, r: out.__setitem__(u, keys))
            return out
        finally:
            world.close()

    out = asyncio.run(go())
    assert len(out) == 8 and peak == 4


# --- inputs, options, the registry --------------------------------------------------------


def test_the_shipped_list_and_input_files(tmp_path: Path) -> None:
    urls = wc.shipped_list()
    assert "https://www.google.com/" in urls and "https://cn.nytimes.com/" in urls and len(urls) == len(set(urls))
    assert wc.read_list("# a comment\n\nhttp://a.example/  # trailing\n") == ["http://a.example/"]
    with pytest.raises(TargetError, match="line 2"):
        wc.read_list("http://a.example/\nftp://b.example/\n")
    assert NETTESTS["web_connectivity"].target_syntax


def test_options_are_checked() -> None:
    settings = ProbeSettings()
    assert wc.default_config(settings, options={"parallelism": "1"}).parallelism == 1
    assert wc.default_config(settings, options={"helper": "https://th.example/"}).helper_url == "https://th.example/"
    for bad in ({"parallelism": "0"}, {"parallelism": "x"}, {"colour": "red"}, {"helper": "th.example"}):
        with pytest.raises((ValueError, TargetError)):
            wc.default_config(settings, options=bad)


# --- the helper's API ----------------------------------------------------------------------


def test_the_helper_answers_the_api_and_refuses_what_is_not_a_control_request(tmp_path: Path) -> None:
    async def go() -> list[tuple[int, bytes]]:
        helper, _ = await start_helper(HelperConfig(timeout=1.0), HELPER, 0)
        port = helper.sockets[0].getsockname()[1]
        replies = []
        try:
            for method, body in (("GET", b""), ("POST", b"{not json"), ("POST", b'{"http_request": "ftp://x/"}'),
                                 ("POST", th.ControlRequest("http://127.0.0.1:9/", {}, ("127.0.0.1:9",)).encode())):
                reader, writer = await asyncio.open_connection(HELPER, port)
                writer.write(f"{method} / HTTP/1.1\r\nHost: h\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
                await writer.drain()
                reply = await reader.read()
                writer.close()
                status = int(reply.split(b" ", 2)[1])
                replies.append((status, reply.partition(b"\r\n\r\n")[2]))
        finally:
            helper.close()
        return replies

    (get, _), (bad_json, why), (bad_url, _), (ok, body) = asyncio.run(go())
    assert (get, bad_json, bad_url, ok) == (200, 400, 400, 200)
    assert b"not JSON" in why
    # By default the helper's internet is the public one: loopback is a bogon, never dialled.
    response = th.parse_response(body)
    assert response["tcp_connect"] == {} and response["ip_info"]["127.0.0.1"]["flags"] & th.FLAG_IS_BOGON
    assert response["http_request"]["failure"] == th.UNKNOWN_ERROR and response["http_request"]["status_code"] == -1


def test_control_request_round_trip_and_parse_errors() -> None:
    request = th.ControlRequest("https://x.example/a", {"User-Agent": ("ua",)}, ("1.2.3.4:443", "[2001:db8::1]:443"))
    assert th.parse_request(request.encode()) == request
    for bad in (b"[]", b'{"http_request": 1}', b'{"http_request": "https://x/", "tcp_connect": ["x:1"]}',
                b'{"http_request": "https://x/", "tcp_connect": ["1.2.3.4:0"]}',
                b'{"http_request": "https://x/", "http_request_headers": {"a": "b"}}'):
        with pytest.raises(th.ProtocolError):
            th.parse_request(bad)
    assert th.page_title("<TITLE>Hello</title><title>x</title>") == "Hello" and th.page_title("<title></title>") == ""
    with pytest.raises(th.ProtocolError):
        th.parse_response(orjson.dumps({"dns": {}, "tcp_connect": []}))


def test_the_commands(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from wallwatch.cli import app

    runner = CliRunner()
    bad = tmp_path / "inputs.txt"
    bad.write_text("https://ok.example/\nnot a url\n")
    result = runner.invoke(app, ["probe", "run", "web_connectivity", "--input-file", str(bad)])
    assert result.exit_code == 2 and "line 2" in result.output
    result = runner.invoke(app, ["probe", "run", "whatsapp", "--target", "https://x.example/"])
    assert result.exit_code == 2
    result = runner.invoke(app, ["helper", "serve", "--tls-cert", str(bad)])
    assert result.exit_code == 2 and "go together" in result.output
