"""The `blockpage` action: an HTTP response injected in the server's place (sans-IO, and parsed by h11)."""

from __future__ import annotations

import h11
import pytest

from wallwatch.censor.engine import Censor
from wallwatch.censor.policy import DEFAULT_BLOCKPAGE, PolicyError, parse_policy
from wallwatch.protocols import inet

from tests.censor.test_engine import CLIENT, Tcp

SITE = "198.19.40.9"
PAGE = "<html><head><title>\u6e29\u99a8\u63d0\u793a</title></head><body>" + "blocked " * 300 + "</body></html>"


def _censor(**options: object) -> Censor:
    rule = {"name": "page", "match": {"http.host": {"suffix": "rfa.org"}}, "action": "blockpage", **options}
    return Censor(parse_policy({"name": "t", "rules": [rule]}))


def _request(host: str) -> bytes:
    return f"GET /mandarin/ HTTP/1.1\r\nHost: {host}\r\nUser-Agent: t\r\n\r\n".encode()


def test_the_request_is_dropped_and_answered_in_sequence_with_the_page() -> None:
    censor = _censor(page=PAGE, status=403)
    conversation = Tcp(SITE, port=80)
    conversation.handshake(censor)
    request = _request("www.rfa.org")
    decision = censor.handle(conversation.client_data(request), 2.0)
    assert not decision.accept and decision.action == "blockpage"
    packets = [inet.parse_packet(injection.data) for injection in decision.inject]
    to_client = [p for p in packets if p.dst == CLIENT]
    to_server = [p for p in packets if p.dst == SITE]
    # The client's view: segments from the server, in sequence from the server's next byte, acking the request.
    assert all(p.src == SITE and p.sport == 80 and p.ack == conversation.cseq for p in to_client)
    assert to_client[0].seq == conversation.sseq
    for before, after in zip(to_client, to_client[1:]):
        assert after.seq == before.seq + len(before.payload)
    assert to_client[-1].flags & inet.FIN and not any(p.flags & inet.FIN for p in to_client[:-1])
    assert len(to_client) > 1  # the page is larger than one segment
    # An HTTP client reads one complete response.
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/mandarin/", headers=[("Host", "www.rfa.org")]))
    client.send(h11.EndOfMessage())
    client.receive_data(b"".join(p.payload for p in to_client))
    response = client.next_event()
    assert isinstance(response, h11.Response) and response.status_code == 403
    body = client.next_event()
    assert isinstance(body, h11.Data) and bytes(body.data).decode() == PAGE
    # The server gets a reset at the sequence number it expects (the request it never saw).
    assert len(to_server) == 1 and to_server[0].flags & inet.RST and to_server[0].seq == conversation.cseq - len(request)
    assert censor.counters["blockpages_injected"] == 1 and censor.counters["decisions.blockpage"] == 1


def test_another_host_passes_and_the_default_page_is_served_200() -> None:
    censor = _censor()
    conversation = Tcp(SITE, port=80)
    conversation.handshake(censor)
    assert censor.handle(conversation.client_data(_request("www.baidu.com")), 2.0).accept
    blocked = Tcp(SITE, port=80, sport=40001)
    blocked.handshake(censor)
    decision = censor.handle(blocked.client_data(_request("www.rfa.org")), 2.0)
    payload = b"".join(inet.parse_packet(i.data).payload for i in decision.inject)
    assert payload.startswith(b"HTTP/1.1 200 OK\r\n") and payload.endswith(DEFAULT_BLOCKPAGE.encode())


@pytest.mark.parametrize(("rule", "message"), [
    ({"match": {"tls.sni": "x.example"}, "action": "blockpage"}, "needs an http.* match"),
    ({"match": {"http.host": "x.example"}, "action": "reset", "page": "<p>"}, "only apply to the blockpage"),
    ({"match": {"http.host": "x.example"}, "action": "blockpage", "status": 99}, "'status' must be"),
    ({"match": {"http.host": "x.example"}, "action": "blockpage", "page": "x" * 20000}, "'page' must be"),
])
def test_blockpage_rules_are_validated(rule: dict, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_policy({"name": "t", "rules": [{"name": "r", **rule}]})
