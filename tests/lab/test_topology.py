"""The lab's network: up, isolated, down without a trace -- also after failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wallwatch.lab import addresses, topology
from wallwatch.probe.settings import ProbeSettings
from wallwatch.lab.topology import Lab, LabError, existing_namespaces, namespace_names

from lab_helpers import CLIENT_CHECKS, client_check, require_lab

pytestmark = pytest.mark.lab


def _leftovers(run_id: str) -> set[str]:
    return existing_namespaces() & set(namespace_names(run_id).values())


def test_state_file_follows_the_contract(plain_lab: Lab) -> None:
    state = json.loads(plain_lab.state_path.read_text())
    assert state["namespaces"] == {
        "client": f"ww{plain_lab.run_id}-client",
        "censor": f"ww{plain_lab.run_id}-censor",
        "services": f"ww{plain_lab.run_id}-svc",
    }
    assert state["resolver"] == "198.19.0.53" and state["censor"] is None
    assert Path(state["ca_cert"]).read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert state["address_map"] == dict(addresses.REAL_TO_LAB)
    assert all(plain_lab.alive().values())
    # Read as the probe reads it: the state file is the lab's contract with the probe.
    settings = ProbeSettings.from_environment({"WALLWATCH_LAB": str(plain_lab.state_path)})
    assert settings.map_address("157.240.0.1") == "198.19.3.1" and settings.resolver == (addresses.RESOLVER, 53)
    assert settings.map_address("198.19.1.1") == "198.19.1.1"  # the lab's own networks dial as they are
    assert settings.lab is not None and set(settings.lab.service_addresses()) >= set(addresses.NAMES.values())
    env = plain_lab.run_in_client(["sh", "-c", "echo $WALLWATCH_LAB"])
    assert env.stdout.strip() == str(plain_lab.state_path)


def test_no_route_out_of_any_namespace(plain_lab: Lab) -> None:
    for namespace in plain_lab.namespaces.values():
        # `ip route get` asks the kernel's routing table; it sends no packet.
        route = subprocess.run(["ip", "-n", namespace, "route", "get", "8.8.8.8"], capture_output=True, text=True, timeout=10)
        assert route.returncode != 0 and "unreachable" in route.stderr, (namespace, route.stdout)
        default = subprocess.run(["ip", "-n", namespace, "route", "show", "default"], capture_output=True, text=True, timeout=10)
        assert default.stdout.strip() == ""
        links = subprocess.run(["ip", "-n", namespace, "-o", "link"], capture_output=True, text=True, timeout=10).stdout
        peers = {word for line in links.splitlines() for word in line.split() if word.startswith("ww")}
        # Every veth's peer is another namespace of this lab, never the root namespace.
        assert peers <= set(plain_lab.namespaces.values()), links
    root_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, timeout=10).stdout
    assert plain_lab.run_id not in root_links


def test_second_lab_through_the_cli_and_down_leaves_nothing(plain_lab: Lab, tmp_path: Path) -> None:
    """A second lab while the module's lab is up, driven as a user would: up, exec, status, down."""
    env = {**os.environ, topology.STATE_ENV: str(tmp_path / "lab.json")}
    wallwatch = [sys.executable, "-m", "wallwatch.cli", "lab"]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*wallwatch, *args], env=env, capture_output=True, text=True, timeout=60)

    up = cli("up", "--no-censor")
    assert up.returncode == 0, up.stdout + up.stderr
    second = Lab.from_state(tmp_path / "lab.json")
    try:
        assert second.run_id != plain_lab.run_id
        again = cli("up", "--no-censor")
        assert again.returncode == 1 and "already up" in again.stdout
        dns = cli("exec", "--", sys.executable, CLIENT_CHECKS, "dns", "e2.whatsapp.net")
        assert json.loads(dns.stdout)["addresses"] == ["198.19.1.2"]
        assert cli("exec", "--", "sh", "-c", "exit 3").returncode == 3
        assert cli("status").returncode == 0
        # The first lab is untouched by the second.
        assert client_check(plain_lab, "dns", "e2.whatsapp.net")["addresses"] == ["198.19.1.2"]
    finally:
        down = cli("down")
    assert down.returncode == 0 and "down" in down.stdout
    assert cli("down").returncode == 0  # idempotent
    assert _leftovers(second.run_id) == set()
    assert not second.workdir.exists() and not (tmp_path / "lab.json").exists()
    assert all(plain_lab.alive().values())


def test_failure_mid_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Services that cannot start (a broken certificate) fail `up` with their log and clean up."""
    require_lab(censor=False)
    import wallwatch.lab.ca as ca

    def broken_certificates(directory: Path, names: object, *, run_id: str = "") -> None:
        directory.mkdir(parents=True)
        for name in ("ca.pem", "server.pem", "server-key.pem"):
            (directory / name).write_text("not a certificate\n")

    monkeypatch.setattr(ca, "make_lab_certificates", broken_certificates)
    run_id = "f" + os.urandom(3).hex()
    with pytest.raises(LabError, match="services process exited"):
        Lab.up(censor=False, state_path=tmp_path / "lab.json", run_id=run_id)
    assert _leftovers(run_id) == set()
    assert list(tmp_path.iterdir()) == []


def test_down_from_state_cleans_a_lab_whose_owner_died(tmp_path: Path) -> None:
    """A lab left by a crashed process is found by its state file and removed, processes included."""
    require_lab(censor=False)
    state = tmp_path / "lab.json"
    lab = Lab.up(censor=False, state_path=state)
    stray = subprocess.Popen(["ip", "netns", "exec", lab.client_ns, "sleep", "60"], stdin=subprocess.DEVNULL)
    try:
        services_pid = lab.state()["services_pid"]
        orphan = Lab.from_state(state)  # what `wallwatch lab down` sees: no process handles
        orphan.down()
        assert _leftovers(lab.run_id) == set()
        assert stray.wait(timeout=5) != 0  # a command still running in the client is stopped too
        assert lab._services is not None and lab._services.wait(timeout=5) is not None
        assert not Path(f"/proc/{services_pid}").exists()
        orphan.down()  # idempotent
    finally:
        stray.kill()
        lab.down()
    assert not state.exists() and not lab.workdir.exists()
