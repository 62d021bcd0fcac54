"""The keyword nettest's rules on recorded facts: what the platform did, once the network let it be reached."""

from __future__ import annotations

from typing import Any

import pytest

from wallwatch.probe.nettests import NETTESTS
from wallwatch.probe.nettests.keyword import parse_keywords
from wallwatch.probe.verdicts import derive_features


def _reached(canaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Facts of a run whose two connections to the platform (sender's, recipient's) completed."""
    connects = [{"transaction_id": tx, "tags": ["feature:keywords", "endpoint:chat-platform.test:443"],
                 "ip": "198.19.17.1", "port": 443, "status": {"success": True, "failure": None}} for tx in (1, 2)]
    sessions = [{"transaction_id": tx, "feature": "keywords", "completed": True, "stage_reached": stage,
                 "failure": None, "failed_at": None} for tx, stage in ((1, "sent"), (2, "inbox"))]
    return {"tcp_connect": connects, "x_wallwatch": {"sessions": sessions, "canaries": canaries}}


def _canary(keyword: str, control: int = 200, status: int = 200, control_in: bool = True,
            keyword_in: bool = True) -> dict[str, Any]:
    return {"keyword": keyword, "control_status": control, "keyword_status": status,
            "control_delivered": control_in, "keyword_delivered": keyword_in}


def _judged(*canaries: dict[str, Any]) -> dict[str, Any]:
    return derive_features("keyword", _reached(list(canaries)))["keywords"]


def test_withheld_while_its_twin_arrived_is_platform_filtering() -> None:
    result = _judged(_canary("小熊维尼", keyword_in=False), _canary("Paddington"))
    assert (result["verdict"], result["method"], result["partial"]) == ("blocked", "platform_filter", True)
    assert result["rule"] == "keyword.filtered+keyword.withheld" and result["blocked_share"] == 0.5


def test_refused_openly_is_platform_filtering_too() -> None:
    result = _judged(_canary("小熊维尼", status=403, keyword_in=False))
    assert (result["verdict"], result["method"], result["rule"]) == ("blocked", "platform_filter",
                                                                     "keyword.filtered+keyword.refused")


@pytest.mark.parametrize("canary", [_canary("x", control_in=False, keyword_in=False), _canary("x", control=500)],
                         ids=["nothing-delivered", "control-refused"])
def test_a_platform_that_delivers_nothing_proves_nothing(canary: dict[str, Any]) -> None:
    assert _judged(canary)["verdict"] == "unknown"


def test_everything_delivered_is_ok() -> None:
    assert _judged(_canary("a"), _canary("b"))["verdict"] == "ok"


def test_an_unreached_platform_is_judged_by_the_network_alone() -> None:
    facts = _reached([_canary("小熊维尼", keyword_in=False)])  # withheld, yet the connection failed:
    facts["tcp_connect"][0]["status"] = {"success": False, "failure": "generic_timeout_error"}
    facts["x_wallwatch"]["sessions"] = [{"transaction_id": 1, "feature": "keywords", "completed": False,
                                         "stage_reached": None, "failure": "generic_timeout_error",
                                         "failed_at": "connect"}]
    result = derive_features("keyword", facts)["keywords"]
    assert result["method"] != "platform_filter" and "says nothing of what the platform filters" in result["evidence"][0]


def test_keywords_option() -> None:
    assert parse_keywords(" Winnie the Pooh | 小熊维尼 |") == ("Winnie the Pooh", "小熊维尼")
    with pytest.raises(ValueError):
        parse_keywords(" | ")
    with pytest.raises(ValueError, match="takes: keywords"):
        NETTESTS["keyword"].check_options({"keyword": "x"})
    with pytest.raises(ValueError, match="takes no option"):
        NETTESTS["skype"].check_options({"opening": "2017"})
    with pytest.raises(ValueError, match="one of 2017, 2022, today"):
        NETTESTS["whatsapp"].check_options({"opening": "2016"})


def test_the_registry_names_whatsapps_openings() -> None:
    from wallwatch.protocols.whatsapp import OPENINGS

    (opening,) = NETTESTS["whatsapp"].options
    assert set(opening.choices or ()) == set(OPENINGS)


def test_options_are_scoped_to_their_nettest_when_several_run() -> None:
    from wallwatch.probe.cli import scoped_options

    assert scoped_options(["whatsapp"], {"opening": "2017"}) == {"whatsapp": {"opening": "2017"}}
    assert scoped_options(["whatsapp", "keyword"], {"whatsapp.opening": "2017", "keyword.keywords": "a|b"}) == {
        "whatsapp": {"opening": "2017"}, "keyword": {"keywords": "a|b"}}
    with pytest.raises(ValueError, match="name the one it is for"):
        scoped_options(["whatsapp", "signal"], {"opening": "2017"})
    with pytest.raises(ValueError, match="signal is not being run"):
        scoped_options(["whatsapp", "skype"], {"signal.x": "1"})
