"""The lab's web sites (lab/websites.py): pages no block-page fingerprint matches, titled as the real sites."""

from __future__ import annotations

from wallwatch.analysis.verdicts.fingerprints import load_fingerprints
from wallwatch.lab import addresses
from wallwatch.lab.https_server import Request
from wallwatch.lab.websites import TITLES, page, site_page_handler
from wallwatch.probe.nettests.web_connectivity import shipped_list
from wallwatch.protocols.webconnectivity import page_title


def test_every_site_of_the_list_is_served_with_its_own_address_and_title() -> None:
    hosts = {url.split("/")[2] for url in shipped_list()}
    assert hosts <= set(addresses.WEB_SITES) and hosts <= set(TITLES)
    assert len(set(addresses.WEB_SITES.values())) == len(addresses.WEB_SITES)  # one address per site
    for host in hosts:
        assert addresses.lab_address_for(host) == addresses.WEB_SITES[host]
        assert page_title(page(host).decode()) == TITLES[host]


def test_no_page_looks_like_a_block_page() -> None:
    """Known false positives (scope `fp`) may match: they mark a site's own page (YouTube's title)."""
    fingerprints = load_fingerprints()
    for host in addresses.WEB_SITES:
        response = site_page_handler(host)(Request("GET", "/any/path?q=1", host, b""))
        headers = {"content-type": response.content_type, "x-site": host}
        assert response.status == 200 and response.chunked and len(response.body) > 4000
        matches = fingerprints.match_http_all(response.body.decode(), headers, f"http://{host}/")
        assert [m.fingerprint.name for m in matches if m.fingerprint.scope != "fp"] == []
