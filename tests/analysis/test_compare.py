"""`wallwatch compare` on the real OONI samples: every agreement and every disagreement, with its reason."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from wallwatch.analysis.compare import OONI_BLOCKING, OONI_OK, agrees, compare_paths, confusion
from wallwatch.cli import app

# (file, feature) -> (wallwatch verdict, rule, OONI's flag, the reason's kind; None = agreement).
EXPECTED = {
    ('backend/20250527233111.802678_ID_webconnectivity_5a37ec909dbf14e3.json', 'page'):
        ('blocked', 'web.blockpage', 'ok', "a fingerprint OONI's flag missed"),
    ('backend/bug_351.json', 'page'):
        ('unknown', 'web.probe_fault', 'blocking', "a probe fault OONI's flag counted as blocking"),
    ('backend/openvpn.json', 'tunnel'):
        ('ok', 'tunnel.ok', 'ok', None),
    ('backend/requests_none.json', 'page'):
        ('blocked', 'web.dns_failure_ctrl_ok', 'blocking', None),
    ('backend/signal_022.json', 'calls'):
        ('ok', 'im.all_ok', 'ok', None),
    ('backend/signal_022.json', 'contacts'):
        ('ok', 'im.all_ok', 'ok', None),
    ('backend/signal_022.json', 'media'):
        ('ok', 'im.all_ok', 'ok', None),
    ('backend/signal_022.json', 'storage'):
        ('ok', 'im.all_ok', 'ok', None),
    ('backend/signal_022.json', 'text'):
        ('ok', 'im.all_ok', 'ok', None),
    ('backend/telegram_nourl.json', 'text'):
        ('ok', 'im.all_ok', 'ok', None),
    ('backend/telegram_nourl.json', 'web'):
        ('ok', 'im.all_ok', 'ok', None),
    ('backend/vanilla_tor_ok.json', 'tunnel'):
        ('ok', 'tunnel.ok', 'ok', None),
    ('backend/web_connectivity_b64_hdr.json', 'page'):
        ('blocked', 'web.blockpage', 'blocking', None),
    ('backend/web_connectivity_b64_incorrect.json', 'page'):
        ('ok', 'web.final_ok_status_match', 'ok', None),
    ('probe-cli-cmd-minipipeline/measurement.json', 'page'):
        ('ok', 'web.final_ok_status_match', 'ok', None),
    ('probe-cli-minipipeline-manual-8844/measurement.json', 'page'):
        ('ok', 'web.final_ok_status_match', 'no flag', "OONI's probe wrote no flag for this feature"),
    ('probe-cli-minipipeline-manual-dnsgoogle80/measurement.json', 'page'):
        ('down', 'web.tcp_failed_ctrl_failed', 'no flag', "OONI's probe wrote no flag for this feature"),
    ('probe-cli-minipipeline-manual-firefoxcom/measurement.json', 'page'):
        ('ok', 'web.final_ok_status_match', 'ok', None),
    ('probe-cli-minipipeline-manual-issue-2456/measurement.json', 'page'):
        ('ok', 'web.final_ok_status_match', 'ok', None),
    ('ts-017-web-connectivity.example.json', 'page'):
        ('ok', 'web.final_ok_status_match', 'ok', None),
    ('ts-018-whatsapp.example.json', 'registration'):
        ('ok', 'im.all_ok', 'ok', None),
    ('ts-018-whatsapp.example.json', 'text'):
        ('ok', 'im.all_ok', 'ok', None),
    ('ts-018-whatsapp.example.json', 'web'):
        ('ok', 'im.all_ok', 'ok', None),
    ('ts-019-facebook-messenger.example.json', 'calls'):
        ('ok', 'im.dns_only_ok', 'ok', None),
    ('ts-019-facebook-messenger.example.json', 'media'):
        ('ok', 'im.all_ok', 'ok', None),
    ('ts-019-facebook-messenger.example.json', 'text'):
        ('ok', 'im.all_ok', 'ok', None),
    ('ts-019-facebook-messenger.example.json', 'web'):
        ('ok', 'im.all_ok', 'ok', None),
    ('ts-020-telegram.example.json', 'text'):
        ('ok', 'im.all_ok', 'ok', None),
    ('ts-020-telegram.example.json', 'web'):
        ('ok', 'im.all_ok', 'ok', None),
    ('ts-029-signal.example.json', 'calls'):
        ('ok', 'im.all_ok', 'ok', None),
    ('ts-029-signal.example.json', 'contacts'):
        ('ok', 'im.all_ok', 'ok', None),
    ('ts-029-signal.example.json', 'storage'):
        ('ok', 'im.all_ok', 'ok', None),
    ('ts-029-signal.example.json', 'text'):
        ('ok', 'im.all_ok', 'ok', None),
}


def test_compare_on_the_samples_asserts_every_pair(samples_dir: Path) -> None:
    comparisons = compare_paths([samples_dir], samples_dir)
    got = {(c.source, c.feature): (c.verdict, c.rule_id, c.ooni, None if c.reason is None else c.reason.split(":")[0])
           for c in comparisons}
    assert got == EXPECTED
    by_key = {(c.source, c.feature): c for c in comparisons}
    # The fastpath's own test measurement: Indonesia's national redirect, which OONI's probe-side flag missed.
    indonesia = by_key[("backend/20250527233111.802678_ID_webconnectivity_5a37ec909dbf14e3.json", "page")]
    assert indonesia.confirmed and indonesia.fingerprint == "ooni.id_lamanlabuh_kominfo"
    assert indonesia.ooni_detail == "blocking=false, accessible=true"
    probe_fault = by_key[("backend/bug_351.json", "page")]
    assert probe_fault.probe_fault.startswith("unknown_failure 'ascii' codec")
    assert confusion(comparisons) == {("blocked", "blocking"): 2, ("blocked", "ok"): 1, ("ok", "ok"): 27,
                                      ("ok", "no flag"): 1, ("down", "no flag"): 1, ("unknown", "blocking"): 1}


def test_compare_command_prints_the_table_and_the_disagreements(samples_dir: Path) -> None:
    result = CliRunner().invoke(app, ["compare", str(samples_dir)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "33 (measurement, feature) pairs, 29 agree" in result.output
    assert "4 disagreement(s)" in result.output and "a probe fault OONI's flag counted" in result.output
    as_json = CliRunner().invoke(app, ["compare", "--json", str(samples_dir / "backend/bug_351.json")])
    assert as_json.exit_code == 0 and '"rule_id":"web.probe_fault"' in as_json.output


def test_a_throttled_feature_is_reachable_as_ooni_flags_say_it() -> None:
    """OONI's flags say reachable or not; a slowed feature was reached."""
    assert agrees("throttled", OONI_OK) and not agrees("throttled", OONI_BLOCKING)
