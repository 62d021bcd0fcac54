"""The lab with its censor: traffic goes through NFQUEUE, and a policy swap takes effect."""

from __future__ import annotations

import importlib.util
from typing import Iterator

import pytest
from lab_helpers import client_check, require_lab

from wallwatch.lab import addresses
from wallwatch.lab.topology import Lab, LabError

pytestmark = pytest.mark.lab

DNS_INJECT = {
    "name": "lab-test-dns",
    "rules": [{"name": "whatsapp-dns", "match": {"dns.qname": {"suffix": "whatsapp.net"}}, "action": "dns-inject"}],
}
CHAT_RESET = {
    "name": "lab-test-chat",
    "rules": [{"name": "whatsapp-chat-fingerprint", "match": {"whatsapp.header": True}, "action": "reset"}],
}


@pytest.fixture(scope="module")
def censored_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    require_lab(censor=True)
    if importlib.util.find_spec("wallwatch.censor.cli") is None:
        pytest.skip("the censor (wallwatch.censor.cli) is not written yet")
    with Lab.up(state_path=tmp_path_factory.mktemp("lab") / "lab.json") as lab:
        yield lab


def test_allow_all_censor_passes_everything(censored_lab: Lab) -> None:
    status = censored_lab.censor_status()
    assert status is not None and status["policy_name"] == "allow-all"
    assert client_check(censored_lab, "dns", "e1.whatsapp.net")["addresses"] == ["198.19.1.1"]
    assert client_check(censored_lab, "chat", "e1.whatsapp.net", "443")["echoed_all"] is True
    assert client_check(censored_lab, "media", "150000")["same"] is True


def test_policy_swap_takes_effect(censored_lab: Lab) -> None:
    loaded = censored_lab.set_policy(DNS_INJECT)
    assert loaded["policy_name"] == "lab-test-dns"
    assert client_check(censored_lab, "dns", "e1.whatsapp.net")["addresses"] == [addresses.SINK]
    assert client_check(censored_lab, "dns", "web.whatsapp.com")["addresses"] == ["198.19.2.2"]

    censored_lab.set_policy(CHAT_RESET)
    assert client_check(censored_lab, "dns", "e1.whatsapp.net")["addresses"] == ["198.19.1.1"]
    blocked = client_check(censored_lab, "chat", "e2.whatsapp.net", "5222")
    assert "ConnectionResetError" in blocked.get("error", ""), blocked  # the rule's action: reset


def test_a_bad_policy_is_refused_and_the_old_one_stays(censored_lab: Lab) -> None:
    censored_lab.set_policy(DNS_INJECT)
    with pytest.raises(LabError, match="rejected"):
        censored_lab.set_policy({"name": "broken", "rules": [{"name": "x", "match": {"no.such.key": 1}, "action": "drop"}]})
    assert client_check(censored_lab, "dns", "e3.whatsapp.net")["addresses"] == [addresses.SINK]
