"""The throughput hook of the ServiceTest base, for every messaging nettest.

whatsapp times media, web and calls against controls by default; every other
messaging nettest names its own bulk objects and call relays and takes
`--option throughput=on|off`. Every bulk object a nettest names must be
served by its lab stand-in by byte range, or the rounds would time a 404.
(Through the real censor: tests/e2e/test_services_matrix.py.)
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from wallwatch.lab import addresses
from wallwatch.lab.https_server import MediaStore, Request, site_handler, web_handler
from wallwatch.probe.nettests import base, facebook_messenger, facetime, signal, skype, telegram, viber, wechat
from wallwatch.probe.nettests.whatsapp import WhatsAppConfig
from wallwatch.probe.settings import ProbeSettings

NETTESTS = {"telegram": telegram, "signal": signal, "facebook_messenger": facebook_messenger, "wechat": wechat,
            "skype": skype, "facetime": facetime, "viber": viber}
CONFIGS = {"telegram": telegram.TelegramConfig, "signal": signal.SignalConfig,
           "facebook_messenger": facebook_messenger.MessengerConfig, "wechat": wechat.WeChatConfig,
           "skype": skype.SkypeConfig, "facetime": facetime.FaceTimeConfig, "viber": viber.ViberConfig}


def _common(name: str) -> base.Common:
    """The nettest's config as its run_once starts from (base.run_service)."""
    return base.configured(CONFIGS[name](), ProbeSettings(), None).common


def test_every_messaging_nettest_times_what_it_transfers() -> None:
    from wallwatch.probe.nettests import NETTESTS as REGISTRY

    for name, module in NETTESTS.items():
        assert module.THROUGHPUT, name
        assert "throughput" in {option.name for option in REGISTRY[name].options}, name


def test_whatsapp_times_media_web_and_calls_unless_told_not_to() -> None:
    plan = WhatsAppConfig().common.throughput
    assert [feature for feature, _ in plan.bulk] == ["media", "web"] and plan.calls == ("calls",)
    assert not WhatsAppConfig(throughput=False).common.throughput


@pytest.mark.parametrize("name", list(NETTESTS))
def test_the_other_nettests_take_throughput_on_or_off(name: str) -> None:
    module = NETTESTS[name]
    common = _common(name)
    assert not common.throughput  # off by default: the rounds cost seconds a feature
    assert base.with_options(name, common, {"throughput": "on"}, module.THROUGHPUT).throughput == module.THROUGHPUT
    assert not base.with_options(name, common, {"throughput": "off"}, module.THROUGHPUT).throughput
    assert base.with_options(name, common, {}, module.THROUGHPUT) == common
    with pytest.raises(ValueError, match="takes no option opening"):
        base.with_options(name, common, {"opening": "2017"}, module.THROUGHPUT)
    with pytest.raises(ValueError, match="on or off"):
        base.with_options(name, common, {"throughput": "yes"}, module.THROUGHPUT)


@pytest.mark.parametrize("url", sorted({url for module in NETTESTS.values() for _, url in module.THROUGHPUT.bulk}
                                       | {url for _, url in WhatsAppConfig().common.throughput.bulk}))
def test_every_bulk_object_is_served_by_range_in_the_lab(url: str) -> None:
    parts = urlsplit(url)
    host = parts.hostname or ""
    assert host in addresses.NAMES, f"{host} has no lab address"
    media_hosts = addresses.MEDIA_SITES | {addresses.MEDIA}
    if host in media_hosts:
        handle = MediaStore().handle
    elif host == addresses.WEB:
        handle = web_handler
    else:
        handle = site_handler(host)
    response = handle(Request("GET", parts.path, host, b"", "bytes=0-9999"))
    assert (response.status, len(response.body)) == (206, 10_000), url
    assert response.content_range is not None and response.content_range.startswith("bytes 0-9999/")
