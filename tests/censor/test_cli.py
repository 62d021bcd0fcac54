"""`wallwatch censor check`: valid policies print their rules; invalid ones exit 1 naming the rule."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.testing import CliRunner

from wallwatch.censor.cli import register

REPO = Path(__file__).resolve().parents[2]


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("noop")(lambda: None)
    register(app)
    return app


def test_check_prints_rules() -> None:
    result = CliRunner().invoke(_app(), ["censor", "check", str(REPO / "policies" / "whatsapp-all.yaml")])
    assert result.exit_code == 0, result.output
    assert "policy 'whatsapp-all': 6 rule(s)" in result.output
    assert "media-sni: tls.sni eq mmg.whatsapp.net => reset x3" in result.output
    assert "chat-servers-ip: ip.dst cidr 198.19.1.0/24 => blackhole-ip (1 kernel rule(s))" in result.output


def test_check_rejects_a_bad_policy(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nrules:\n  - name: oops\n    match: {tls.sni: x}\n    action: reset\n    count: 0\n")
    result = CliRunner().invoke(_app(), ["censor", "check", str(bad)])
    assert result.exit_code == 1 and "rule 'oops'" in result.output


def test_check_shows_issue4_options() -> None:
    result = CliRunner().invoke(_app(), ["censor", "check", str(REPO / "policies" / "all-techniques.yaml")])
    assert result.exit_code == 0, result.output
    assert "fully-encrypted: fet.suspicious eq True => drop, probability 0.26 per flow, " \
           "residual 180 s on the triple" in result.output
    assert "keyword: http.target contains ['winnie', 'falun', 'ultrasurf'] => reset x3, residual 90 s" in result.output
    assert "slow-web: tls.sni suffix web.whatsapp.com => throttle rate 256000 bit/s (htb 1:1)" in result.output
    assert "laggy-calls: proto eq udp, ip.dst cidr 198.19.3.0/24 => throttle delay 150 ms +-30 ms" in result.output


def test_check_rejects_a_bad_issue4_option(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nrules:\n  - name: slow\n    match: {port.dst: 443}\n    action: throttle\n"
                   "    rate: quickly\n")
    result = CliRunner().invoke(_app(), ["censor", "check", str(bad)])
    assert result.exit_code == 1 and "rule 'slow': 'rate'" in result.output and "256kbit" in result.output
