"""The pipeline's endpoint -> feature split for OONI's IM tests agrees with wallwatch's own nettests.

OONI's telegram/signal/facebook_messenger measurements carry no feature tags, so
`observations.classify` splits them by host; wallwatch's nettests tag every event
with the feature it measures. The same endpoint must land on the same feature
either way, or the two sources would disagree about one service.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from wallwatch.analysis.verdicts.observations import classify
from wallwatch.probe.nettests.facebook_messenger import MessengerConfig
from wallwatch.probe.nettests.signal import SignalConfig
from wallwatch.probe.nettests.telegram import TelegramConfig


def _host(url: str) -> str:
    return urlsplit(url).hostname or ""


def _endpoints() -> list[tuple[str, str, int, str]]:
    telegram, signal, messenger = TelegramConfig(), SignalConfig(), MessengerConfig()
    return [
        *(("telegram", dc, port, "text") for dc in telegram.data_centres for port in telegram.dc_ports),
        ("telegram", _host(telegram.media_url), 443, "media"),
        ("telegram", _host(telegram.web_url), 443, "web"),
        ("signal", _host(signal.chat_url), 443, "text"),
        *(("signal", _host(url), 443, "media") for url in signal.attachment_urls),
        ("signal", _host(signal.storage_url), 443, "storage"),
        ("signal", signal.sfu_host, 443, "calls"),
        ("facebook_messenger", messenger.edge_host, 443, "text"),
        *(("facebook_messenger", _host(url), 443, "text") for url in messenger.api_urls),
        *(("facebook_messenger", _host(url), 443, "media") for url in messenger.media_urls),
        ("facebook_messenger", messenger.stun_host, 3478, "calls"),
        ("facebook_messenger", _host(messenger.web_url), 443, "web"),
    ]


@pytest.mark.parametrize(("test_name", "host", "port", "feature"), _endpoints())
def test_untagged_endpoint_lands_on_the_nettests_feature(test_name: str, host: str, port: int, feature: str) -> None:
    by_address = host[0].isdigit()
    target = classify(test_name, None, None if by_address else host, host if by_address else None, port, None)
    assert (target.service, target.feature) == (test_name, feature)


def test_wallwatch_tags_win() -> None:
    assert classify("signal", None, "cdn.signal.org", None, 443, ["feature:media", "endpoint:cdn.signal.org:443"]
                    ).feature == "media"
    assert classify("telegram", None, None, "149.154.175.50", 80, ["feature:text"]).feature == "text"
