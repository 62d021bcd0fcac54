"""The web sites of web_connectivity's 2017 list, played in the lab (addresses.WEB_SITES).

Each real name is answered by the lab's DNS with its own lab address, where a
server answers any path on port 80 (HTTP) and 443 (HTTPS, lab certificate) with
a page of the site's own title: what web_connectivity compares between the probe
and the test helper (status, body length, headers, title: [ooni-spec] ts-017).
The page is a few kilobytes, as a real front page is tens, so that a block page
in its place differs in length; it is sent in chunks, as large sites send theirs,
and carries a header of its own (`x-site`), so that the helper's copy and the
probe's share the headers a block page lacks. No page holds a word any known
block-page fingerprint matches (tests/lab/test_websites.py checks every one).
"""

from __future__ import annotations

import html

import asyncio
import ssl

from wallwatch.lab import addresses
from wallwatch.lab.https_server import Handler, Request, Response, start_https

# The sites' titles, as their front pages had them in 2017 (what a title comparison reads).
TITLES: dict[str, str] = {
    "www.google.com": "Google",
    "mail.google.com": "Gmail",
    "www.facebook.com": "Facebook - Log In or Sign Up",
    "www.instagram.com": "Instagram",
    "twitter.com": "Twitter. It's what's happening.",
    "www.youtube.com": "YouTube",
    "cn.nytimes.com": "纽约时报中文网 国际纵览",
    "www.rfa.org": "Radio Free Asia Mandarin",
    "www.voachinese.com": "美国之音中文网",
    "www.bbc.com": "BBC News 中文",
    "s.weibo.com": "微博搜索",
    "www.baidu.com": "百度一下，你就知道",
    "weixin.qq.com": "微信，是一个生活方式",
}
PAGE_PARAGRAPHS = 60  # ~5 KB of text


def page(host: str) -> bytes:
    """The site's page: its title and paragraphs that name the lab stand-in (same bytes every time)."""
    title = html.escape(TITLES.get(host, host), quote=False)
    paragraph = f"<p>wallwatch lab: an emulated {html.escape(host)}, answering every path with this page.</p>\n"
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n"
            f"<body><h1>{title}</h1>\n{paragraph * PAGE_PARAGRAPHS}</body></html>\n").encode()


def site_page_handler(host: str) -> Handler:
    body = page(host)

    def handle(request: Request) -> Response:
        if request.method in ("GET", "HEAD"):
            return Response(200, body, "text/html; charset=utf-8", chunked=True, headers=(("x-site", host),))
        return Response(405, b"method not allowed\n")

    return handle


async def start_sites(context: ssl.SSLContext) -> list[asyncio.AbstractServer]:
    """Every site on its own address: HTTP on 80, HTTPS on 443."""
    servers = []
    for host, address in addresses.WEB_SITES.items():
        handler = site_page_handler(host)
        for port in addresses.WEB_PORTS:
            servers.append(await start_https(address, handler, context if port == 443 else None, port))
    return servers
