"""Lab-mode settings from the state file, and the CLI's surface (never run against the real network here)."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.probe import servers
from wallwatch.cli import app
from wallwatch.probe.nettests.whatsapp import CALL_RELAYS, default_config
from wallwatch.probe.settings import LAB_ENV, ProbeSettings, SettingsError


def write_state(tmp_path: Path, **overrides: object) -> Path:
    pki = servers.make_pki(tmp_path, ["web.whatsapp.com"], tag="lab")
    state = {"run_id": "abc123", "resolver": "198.19.0.53", "ca_cert": str(pki.ca_pem),
             "address_map": {"157.240.0.0/16": "198.19.3.1", "31.13.64.0/18": "198.19.3.2"},
             "names": {"e1.whatsapp.net": "198.19.1.1"}, "lab_networks": ["198.18.0.0/15"], **overrides}
    path = tmp_path / "lab.json"
    path.write_text(json.dumps(state))
    return path


def test_lab_state_switches_resolver_trust_and_addresses(tmp_path: Path) -> None:
    settings = ProbeSettings.from_environment({LAB_ENV: str(write_state(tmp_path))})
    assert settings.resolver == ("198.19.0.53", 53) and settings.lab is not None and settings.lab.run_id == "abc123"
    assert [settings.map_address(ip) for ip in CALL_RELAYS] == ["198.19.3.1", "198.19.3.2"]
    assert settings.map_address("198.19.1.4") == "198.19.1.4"  # lab addresses are dialled as they are
    with pytest.raises(KeyError):
        settings.map_address("8.8.8.8")  # never dial a real-world address from the lab
    context = settings.tls_context(("http/1.1",))
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "lab CA"),),)]  # only the lab CA
    assert "198.19.1.1/32" in default_config(settings).expected_networks


def test_without_lab_state_the_system_is_used() -> None:
    settings = ProbeSettings.from_environment({})
    assert settings.resolver is None and settings.lab is None and settings.map_address("157.240.229.60") == "157.240.229.60"
    assert "198.19.1.1/32" not in default_config(settings).expected_networks


@pytest.mark.parametrize("problem", ["missing_file", "missing_field", "missing_ca", "not_json", "bad_address_map",
                                     "not_an_object"])
def test_bad_lab_state_is_a_clear_error(tmp_path: Path, problem: str) -> None:
    path = write_state(tmp_path, **({"resolver": ""} if problem == "missing_field" else {}))
    if problem == "missing_file":
        path = tmp_path / "nope.json"
    elif problem == "missing_ca":
        path = write_state(tmp_path, ca_cert=str(tmp_path / "gone.pem"))
    elif problem == "not_json":
        path.write_text("{not json")
    elif problem == "bad_address_map":
        path = write_state(tmp_path, address_map={"157.240.0.0/99": "198.19.3.1"})
    elif problem == "not_an_object":
        path.write_text("[]")
    with pytest.raises(SettingsError):
        ProbeSettings.from_environment({LAB_ENV: str(path)})


def test_cli_lists_nettests_and_refuses_bad_input(tmp_path: Path) -> None:
    runner = CliRunner()
    listed = runner.invoke(app, ["probe", "list"])
    assert listed.exit_code == 0 and listed.output.startswith("whatsapp\t")
    unknown = runner.invoke(app, ["probe", "run", "telegraph"])
    assert unknown.exit_code != 0
    bad_lab = runner.invoke(app, ["probe", "run", "whatsapp"], env={LAB_ENV: str(tmp_path / "missing.json")})
    assert bad_lab.exit_code == 2 and "cannot read lab state file" in bad_lab.output
