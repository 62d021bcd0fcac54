"""Several ISPs in one lab: own client and censor namespaces each, one services namespace, policies per ISP."""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
from lab_helpers import client_check, require_lab

from wallwatch.lab import addresses, topology
from wallwatch.lab.topology import Isp, Lab, LabError, run_namespaces

pytestmark = pytest.mark.lab

ISPS = (
    Isp("telecom", "China Telecom", "AS4134", "CN", "CHINANET"),
    Isp("unicom", "China Unicom", "AS4837", "CN", "CHINA169"),
    Isp("mobile", "China Mobile", "AS9808", "CN", "CMNET"),
)
DNS_INJECT = {
    "name": "dns-inject-whatsapp",
    "rules": [{"name": "whatsapp-dns", "match": {"dns.qname": {"suffix": "whatsapp.net"}}, "action": "dns-inject"}],
}
CHAT_RESET = {
    "name": "chat-reset",
    "rules": [{"name": "chat-fingerprint", "match": {"whatsapp.header": True}, "action": "reset"}],
}
ALLOW_ALL = {"name": "allow-all", "rules": []}


@pytest.fixture(scope="module")
def three_isps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    require_lab(censor=True)
    if importlib.util.find_spec("wallwatch.censor.cli") is None:
        pytest.skip("the censor (wallwatch.censor.cli) is not written yet")
    with Lab.up(isps=ISPS, state_path=tmp_path_factory.mktemp("lab") / "lab.json") as lab:
        yield lab


def test_each_isp_has_its_own_namespaces_addresses_and_censor(three_isps: Lab) -> None:
    run = three_isps.run_id
    assert set(run_namespaces(run)) == {
        *(f"ww{run}-{role}{k}" for k in (1, 2, 3) for role in ("client", "censor")), f"ww{run}-svc",
    }
    assert all(three_isps.alive().values()), three_isps.alive()
    for k, isp in enumerate(ISPS, start=1):
        shown = three_isps.run_in_client(["ip", "-4", "-o", "addr", "show", "dev", topology.CLIENT_IF], isp=isp.id)
        assert f"198.18.{k}.2/24" in shown.stdout, shown.stdout
        status = three_isps.censor_status(isp.id)
        assert status is not None and status["policy_name"] == "allow-all"
    pids = {entry["censor"]["pid"] for entry in three_isps.state()["isps"]}
    assert len(pids) == 3  # one censor process per ISP
    reread = Lab.from_state(three_isps.state_path)
    assert reread.isps == ISPS and reread.multi_isp and reread.sites == three_isps.sites


def test_every_isp_reaches_the_shared_services_and_nothing_else(three_isps: Lab) -> None:
    for isp in ISPS:
        assert client_check(three_isps, "dns", "e1.whatsapp.net", isp=isp.id)["addresses"] == ["198.19.1.1"]
        assert client_check(three_isps, "chat", "e1.whatsapp.net", "443", isp=isp.id)["echoed_all"] is True
    for namespace in run_namespaces(three_isps.run_id):
        # `ip route get` asks the routing table; it sends nothing.
        route = subprocess.run(["ip", "-n", namespace, "route", "get", "8.8.8.8"], capture_output=True, text=True, timeout=10)
        assert route.returncode != 0 and "unreachable" in route.stderr, (namespace, route.stdout)
        links = subprocess.run(["ip", "-n", namespace, "-o", "link"], capture_output=True, text=True, timeout=10).stdout
        assert all(len(line.split(":")[1].split("@")[0].strip()) <= 15 for line in links.splitlines())
    # One client cannot reach another ISP's client: only the lab internet is routed between ISPs' censors.
    def ping(address: str) -> int:
        return three_isps.run_in_client(["ping", "-c", "1", "-W", "1", address], isp="telecom", timeout=10).returncode

    assert ping("198.18.1.1") == 0  # its own censor answers: ping works here
    assert ping("198.18.2.2") != 0


def test_policies_take_effect_per_isp_independently(three_isps: Lab) -> None:
    try:
        three_isps.set_policy(DNS_INJECT, isp="unicom")
        assert client_check(three_isps, "dns", "e2.whatsapp.net", isp="unicom")["addresses"] == [addresses.SINK]
        assert client_check(three_isps, "dns", "e2.whatsapp.net", isp="telecom")["addresses"] == ["198.19.1.2"]
        assert client_check(three_isps, "dns", "e2.whatsapp.net", isp="mobile")["addresses"] == ["198.19.1.2"]

        statuses = three_isps.set_policies({"telecom": CHAT_RESET, "unicom": ALLOW_ALL})
        assert {i: s["policy_name"] for i, s in statuses.items()} == {"telecom": "chat-reset", "unicom": "allow-all"}
        blocked = client_check(three_isps, "chat", "e3.whatsapp.net", "5222", isp="telecom")
        assert "ConnectionResetError" in blocked.get("error", ""), blocked
        assert client_check(three_isps, "chat", "e3.whatsapp.net", "5222", isp="mobile")["echoed_all"] is True
        assert client_check(three_isps, "dns", "e2.whatsapp.net", isp="unicom")["addresses"] == ["198.19.1.2"]

        three_isps.set_policy(DNS_INJECT)  # no isp: every ISP
        for isp in ISPS:
            assert three_isps.censor_status(isp.id)["policy_name"] == "dns-inject-whatsapp"
            assert client_check(three_isps, "dns", "e4.whatsapp.net", isp=isp.id)["addresses"] == [addresses.SINK]
        with pytest.raises(LabError, match="no ISP 'nope'"):
            three_isps.set_policy(ALLOW_ALL, isp="nope")
    finally:
        three_isps.set_policy(ALLOW_ALL)


def test_bad_isp_lists_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate ISP ids: a"):
        Lab.up(isps=[Isp("a"), Isp("a")], state_path="/nonexistent/never-written.json")
    with pytest.raises(ValueError, match="asn"):
        Isp("x", asn="4134")
    with pytest.raises(ValueError, match="ISP id"):
        Isp("Has Space")


def test_failure_mid_build_of_a_multi_isp_lab_leaves_nothing(tmp_path: Path) -> None:
    """The second ISP's censor cannot load its policy: `up` fails, and every namespace of the run is gone."""
    require_lab(censor=True)
    if importlib.util.find_spec("wallwatch.censor.cli") is None:
        pytest.skip("the censor (wallwatch.censor.cli) is not written yet")
    run_id = "m" + os.urandom(3).hex()
    broken = {"name": "broken", "rules": [{"name": "x", "match": {"no.such.key": 1}, "action": "drop"}]}
    with pytest.raises(LabError, match="censor"):
        Lab.up(broken, isps=ISPS[:2], state_path=tmp_path / "lab.json", run_id=run_id, timeout=20)
    assert run_namespaces(run_id) == []
    assert list(tmp_path.iterdir()) == []


def test_cli_builds_a_scenarios_isps_and_targets_one(tmp_path: Path) -> None:
    """`lab up --isps-from SCENARIO`, `lab exec --isp`, `lab policy --isp`, `lab down`, as a user would."""
    require_lab(censor=True)
    import json
    import sys

    scenario = Path(__file__).resolve().parents[2] / "scenarios" / "cn-2017-09.yaml"
    env = {**os.environ, topology.STATE_ENV: str(tmp_path / "lab.json"), "COLUMNS": "160"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "wallwatch.cli", "lab", *args], env=env, capture_output=True, text=True, timeout=90)

    up = cli("up", "--isps-from", str(scenario))
    assert up.returncode == 0, up.stdout + up.stderr
    lab = Lab.from_state(tmp_path / "lab.json")
    try:
        assert [isp.asn for isp in lab.isps] == ["AS4134", "AS4837", "AS9808"] and lab.multi_isp
        shown = cli("exec", "--isp", "unicom", "--", "ip", "-4", "-o", "addr", "show", "dev", topology.CLIENT_IF)
        assert shown.returncode == 0 and "198.18.2.2/24" in shown.stdout, shown.stdout + shown.stderr
        assert cli("exec", "--isp", "nope", "--", "true").returncode == 1
        policy = tmp_path / "dns.json"
        policy.write_text(json.dumps(DNS_INJECT))  # JSON is YAML
        assert cli("policy", str(policy), "--isp", "mobile").returncode == 0
        assert lab.censor_status("mobile")["policy_name"] == "dns-inject-whatsapp"
        assert lab.censor_status("telecom")["policy_name"] == "allow-all"
    finally:
        down = cli("down")
    assert down.returncode == 0
    assert run_namespaces(lab.run_id) == []
