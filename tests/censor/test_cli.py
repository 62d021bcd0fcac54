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
