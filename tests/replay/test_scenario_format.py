"""The scenario format: cn-2017-09 reads as the timeline it describes; malformed files are refused, naming line and key."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from wallwatch.lab.scenario import Expectation, ScenarioError, load_scenario, parse_scenario

ROOT = Path(__file__).resolve().parents[2]
CN_2017_09 = ROOT / "scenarios" / "cn-2017-09.yaml"

VALID = textwrap.dedent(
    """\
    name: tiny
    start: 2020-01-01
    end: 2020-01-04
    probes: [whatsapp]
    isps:
      - {id: a, name: A, asn: AS1, cc: ZZ, network_name: A net}
      - {id: b, name: B, asn: AS2, cc: ZZ, network_name: B net}
    policies:
      open:
        rules: []
        truth:
          whatsapp: {text: ok, media: ok, calls: ok, web: ok, registration: ok}
      media:
        rules:
          - {name: media-sni, match: {tls.sni: {suffix: mmg.whatsapp.net}}, action: reset}
        truth:
          whatsapp: {text: ok, media: blocked/tls_sni, calls: ok, web: ok, registration: ok}
    periods:
      - {from: 2020-01-01, to: 2020-01-02, policy: open}
      - {from: 2020-01-03, to: 2020-01-04, policy: media, isps: [a]}
      - {from: 2020-01-03, to: 2020-01-04, policy: open, isps: [b]}
    """
)


def day(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


def test_cn_2017_09_is_the_timeline_of_issue_4() -> None:
    scenario = load_scenario(CN_2017_09)
    assert [(i.id, i.asn, i.cc) for i in scenario.isps] == [("telecom", "AS4134", "CN"), ("unicom", "AS4837", "CN"), ("mobile", "AS9808", "CN")]
    assert (scenario.start, scenario.end, scenario.probes) == (day("2017-07-01"), day("2017-10-24"),
                                                                ("whatsapp", "openvpn", "telegram", "signal",
                                                                 "facebook_messenger", "wechat", "skype", "facetime"))
    assert scenario.options == {"whatsapp": {"opening": "2017"}}

    def policies(text: str) -> list[str]:
        return [scenario.policy_on(day(text), isp.id).name for isp in scenario.isps]

    assert policies("2017-07-17") == ["open"] * 3
    assert policies("2017-07-18") == ["media-calls"] * 3  # media and calls blocked, text works
    assert scenario.policy_on(day("2017-07-18"), "telecom").truth["whatsapp"]["text"] == Expectation("ok", None)
    assert policies("2017-08-15") == ["open"] * 3  # relief in August
    # Wednesday 20 September: text on and off on one ISP, spreading to all by Saturday 23rd ...
    assert policies("2017-09-20") == ["text-on-off", "vpn-media-calls", "vpn-media-calls"]
    assert policies("2017-09-22") == ["text-on-off", "text-on-off", "vpn-media-calls"]
    assert policies("2017-09-23") == ["text-on-off"] * 3
    # ... fully blocked on Monday 25th, and kept through the Congress (18-24 October).
    assert policies("2017-09-25") == policies("2017-10-18") == policies("2017-10-24") == ["text-blocked"] * 3
    on_off = scenario.policies["text-on-off"]
    chat_rule = next(rule for rule in on_off.rules if rule["match"] == {"whatsapp.header": True})
    assert 0.3 <= chat_rule["probability"] < 1  # (1-p)^32 is negligible: text is blocked/protocol_dpi
    assert on_off.truth["whatsapp"]["text"] == Expectation("blocked", "protocol_dpi")
    for name in ("vpn-media-calls", "text-on-off", "text-blocked"):
        assert any(rule["match"] == {"openvpn.handshake": True} for rule in scenario.policies[name].rules)
        assert scenario.policies[name].truth["openvpn"]["tunnel"] == Expectation("blocked", "protocol_dpi")


def test_sampling_keeps_the_first_days_of_every_phase_and_every_change_day() -> None:
    scenario = load_scenario(CN_2017_09)
    assert len(scenario.sample_days()) == 116
    one = scenario.sample_days(1)
    assert [str(d) for d in one] == ["2017-07-01", "2017-07-18", "2017-08-01", "2017-09-20", "2017-09-22", "2017-09-23", "2017-09-25"]
    assert set(scenario.change_days()) <= set(one)
    two = scenario.sample_days(2)
    assert {day(f"2017-09-{d}") for d in range(20, 27)} <= set(two) and len(two) == 13
    # --from/--to clip the range; a phase cut by --from starts there.
    assert [str(d) for d in scenario.sample_days(1, day("2017-09-21"), day("2017-09-23"))] == ["2017-09-21", "2017-09-22", "2017-09-23"]
    with pytest.raises(ScenarioError, match="no days between"):
        scenario.sample_days(1, day("2018-01-01"), None)


def test_nettest_options_are_read_as_text_for_the_whole_timeline() -> None:
    scenario = parse_scenario(VALID.replace("probes: [whatsapp]\n", "probes: [whatsapp]\noptions:\n  whatsapp: {opening: 2017}\n"))
    assert scenario.options == {"whatsapp": {"opening": "2017"}}
    assert parse_scenario(VALID).options == {}


def test_the_valid_example_parses() -> None:
    scenario = parse_scenario(VALID, source="tiny.yaml")
    assert scenario.policy_on(day("2020-01-03"), "a").name == "media"
    assert scenario.policy_on(day("2020-01-03"), "b").name == "open"
    assert scenario.policy_on(day("2020-01-03"), "a").censor_policy()["rules"][0]["action"] == "reset"
    assert scenario.probe_time == dt.time(12, 0)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("name: tiny\n", "name: tiny\nstrat: 2020-01-01\n", r"tiny.yaml:2: strat: unknown key 'strat'"),
        ("start: 2020-01-01", "start: 2020-13-01", r"tiny.yaml:2: not valid YAML: invalid date '2020-13-01'"),
        ("asn: AS2,", "asn: 4837,", r"tiny.yaml:7: isps\[1\].asn: .*must look like AS4134"),
        ("{id: b,", "{id: a,", r"tiny.yaml:7: isps\[1\].id: duplicate ISP id 'a'"),
        ("media: blocked/tls_sni", "media: blocked/sni", r"tiny.yaml:17: policies.media.truth.whatsapp.media: unknown method 'sni'"),
        ("media: blocked/tls_sni", "media: censored", r":17: policies.media.truth.whatsapp.media: unknown verdict 'censored'"),
        ("text: ok, media: blocked", "media: blocked", r":17: policies.media.truth.whatsapp: no ground truth for feature 'text'"),
        ("calls: ok, web: ok, registration: ok}\nperiods", "calls: ok, web: ok, registration: ok, video: ok}\nperiods",
         r":17: policies.media.truth.whatsapp.video: whatsapp has no feature 'video'"),
        # The censor's complaint is named at the rule's own line and key.
        ("action: reset}", "action: explode}", r":15: policies.media.rules\[0\].action: the censor refuses it: .*explode"),
        ("policy: media, isps: [a]", "policy: medai, isps: [a]", r":20: periods\[1\].policy: no policy 'medai'"),
        ("isps: [b]}", "isps: [c]}", r":21: periods\[2\].isps: no ISP 'c'"),
        ("to: 2020-01-02, policy: open}", "to: 2020-01-03, policy: open}", r"tiny.yaml:20: periods: this period overlaps the one at line 19 on 2020-01-03 for ISP a"),
        ("to: 2020-01-02, policy: open}", "to: 2020-01-01, policy: open}", r"periods: no period covers 2020-01-02 for ISP a"),
        ("to: 2020-01-04, policy: open, isps: [b]", "to: 2020-01-05, policy: open, isps: [b]", r":21: periods\[2\].to: .*outside the scenario"),
        ("probes: [whatsapp]", "probes: [whatsapp, openvpn]", r":11: policies.open.truth: no ground truth for probed service 'openvpn'"),
        ("rules: []", "rules: [", r"tiny.yaml:\d+: not valid YAML"),
        # Duplicate keys (the later one used to win silently), nulls and numbers where text goes.
        ("end: 2020-01-04\n", "end: 2020-01-04\nend: 2020-01-09\n", r"tiny.yaml:4: not valid YAML: found duplicate key 'end' \(first at line 3\)"),
        ("action: reset}", "action: reset, action: allow}", r"tiny.yaml:15: not valid YAML: found duplicate key 'action'"),
        ("media:\n    rules:\n", "media:\n    truth: {}\n    rules:\n",
         r"tiny.yaml:17: not valid YAML: found duplicate key 'truth' \(first at line 14\)"),
        ("rules: []", "rules:", r"tiny.yaml:10: policies.open.rules: must be a list of censor rules"),
        ("{suffix: mmg.whatsapp.net}", "{suffix: null}", r":15: policies.media.rules\[0\].match.tls.sni.suffix: the censor refuses it: .*got None"),
        ("policy: open}", "policy: open, note: 12}", r":19: periods\[0\].note: must be text, not 12"),
        ("name: tiny\n", "name: tiny\ndescription: [a, b]\n", r":2: description: must be text"),
        ("probes: [whatsapp]\n", "probes: [whatsapp]\noptions: {whatsapp: {opening: 2016}}\n",
         r"tiny.yaml:5: options.whatsapp.opening: whatsapp: opening must be one of 2017, 2022, today, not '2016'"),
        ("probes: [whatsapp]\n", "probes: [whatsapp]\noptions: {whatsapp: {era: 2017}}\n",
         r":5: options.whatsapp.era: whatsapp takes no option 'era'; it takes: opening=2017\|2022\|today"),
        ("probes: [whatsapp]\n", "probes: [whatsapp]\noptions: {signal: {opening: 2017}}\n",
         r":5: options.signal: 'signal' is not in `probes`"),
    ],
)
def test_malformed_scenarios_are_refused_naming_line_and_key(old: str, new: str, message: str) -> None:
    assert old in VALID
    with pytest.raises(ScenarioError, match=message):
        parse_scenario(VALID.replace(old, new, 1), source="tiny.yaml")


def test_the_cli_refuses_a_malformed_scenario_before_building_a_lab(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(VALID.replace("media: blocked/tls_sni", "media: blocked/sni"))
    result = subprocess.run(
        [sys.executable, "-m", "wallwatch.cli", "lab", "replay", str(bad), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "bad.yaml:17: policies.media.truth.whatsapp.media: unknown method 'sni'" in " ".join(result.stdout.split())
    assert not (tmp_path / "out").exists()


def test_a_nettest_that_is_not_installed_is_skipped_with_a_warning() -> None:
    from wallwatch.lab.replay import runnable_probes

    text = VALID.replace("probes: [whatsapp]", "probes: [whatsapp, carrier-pigeon]").replace(
        "registration: ok}\n", "registration: ok}\n      carrier-pigeon: {delivery: ok}\n"
    )
    scenario = parse_scenario(text, source="tiny.yaml")
    assert scenario.policies["media"].truth["carrier-pigeon"]["delivery"] == Expectation("ok", None)
    probes, warnings = runnable_probes(scenario)
    assert probes == ("whatsapp",)
    assert len(warnings) == 1 and "'carrier-pigeon' is not installed" in warnings[0]


def test_an_empty_scenario_file_is_refused_at_line_1() -> None:
    with pytest.raises(ScenarioError, match=r"^empty.yaml:1: scenario: a scenario is a mapping .*\(the file is empty\)"):
        parse_scenario("# nothing yet\n", source="empty.yaml")


# --- the demo's phases file: the same loader and the same checks ------------------------------

PHASES = textwrap.dedent(
    """\
    name: tiny-demo
    phases:
      - id: normal
        label: Before
        policy: {name: none, rules: []}
        expect: {text: ok, media: ok}
      - id: media
        policy:
          name: media
          rules:
            - name: media-sni
              match: {tls.sni: {suffix: mmg.whatsapp.net}}
              action: reset
        expect: {text: ok, media: blocked/tls_sni}
    """
)


def test_the_default_phases_file_loads() -> None:
    from wallwatch.lab.demo import DEFAULT_SCENARIO, load_phases

    scenario = load_phases(DEFAULT_SCENARIO)
    assert scenario.name == "china-2017" and [p.id for p in scenario.phases] == ["normal", "2017-07", "2017-09"]


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("        action: reset\n", "        action: reset\n          action: allow\n",
         r"phases.yaml:14: not valid YAML: found duplicate key 'action' \(first at line 13\)"),
        ("label: Before\n", "label: Before\n    label: After\n", r"phases.yaml:5: not valid YAML: found duplicate key 'label'"),
        ("{suffix: mmg.whatsapp.net}", "{regex: '(a)\\1'}",
         r"phases.yaml:12: phases\[1\].policy.rules\[0\].match.tls.sni.regex: the censor refuses it: .*no backreferences"),
        ("action: reset", "action: explode", r"phases.yaml:13: phases\[1\].policy.rules\[0\].action: the censor refuses it"),
        ("media: blocked/tls_sni}", "media: blocked/sni}", r"phases.yaml:14: phases\[1\].expect.media: unknown method 'sni'"),
        ("{text: ok, media: ok}", "{text: ok, video: ok}", r"phases.yaml:6: phases\[0\].expect.video: whatsapp has no feature"),
        ("- id: media", "- id: normal", r"phases.yaml:7: phases\[1\].id: duplicate phase id 'normal'"),
        ("  - id: normal\n", "  - id: 7\n", r"phases.yaml:3: phases\[0\].id: must be a non-empty string, not 7"),
        ("policy: {name: none, rules: []}", "policy: {name: none, rules: }", r"phases.yaml:5: phases\[0\].policy.rules: .*must be a list"),
        ("policy: {name: none, rules: []}", "policy:", r"phases.yaml:5: phases\[0\].policy: must be a censor policy"),
    ],
)
def test_malformed_phases_are_refused_naming_line_and_key(tmp_path: Path, old: str, new: str, message: str) -> None:
    from wallwatch.lab.demo import load_phases

    assert old in PHASES
    path = tmp_path / "phases.yaml"
    path.write_text(PHASES.replace(old, new, 1))
    with pytest.raises(ScenarioError, match=message):
        load_phases(path)


def test_an_empty_phases_file_is_refused(tmp_path: Path) -> None:
    from wallwatch.lab.demo import load_phases

    path = tmp_path / "phases.yaml"
    path.write_text("")
    with pytest.raises(ScenarioError, match=r"phases.yaml:1: scenario: a phased scenario needs a non-empty `phases` list"):
        load_phases(path)


def test_the_demo_table_has_one_row_per_service_and_feature() -> None:
    """`wallwatch demo`'s table: every service of 2017, each feature a row, the service named once."""
    from rich.console import Console

    from wallwatch.lab.demo import DEFAULT_SCENARIO, Observed, _render, _row, load_phases

    scenario = load_phases(DEFAULT_SCENARIO)
    rows = [_row(phase, service, feature, expected, Observed(expected.verdict, expected.method), None)
            for phase in scenario.phases for service, features in phase.expect.items()
            for feature, expected in features.items()]
    console = Console(width=160, record=True)
    _render(console, scenario, scenario.probes, rows)
    text = console.export_text()
    for service in scenario.probes:
        assert sum(line.split("│")[1].strip() == service for line in text.splitlines() if "│" in line) == 1, service
    assert text.count("blocked (protocol_dpi)") == 2  # WhatsApp text and OpenVPN in September
    assert "expected" not in text  # every cell matched


def test_the_demo_reads_the_first_format_too(tmp_path: Path) -> None:
    from wallwatch.lab.demo import load_phases

    (tmp_path / "old.yaml").write_text(textwrap.dedent("""\
        name: old
        phases:
          - id: p
            policy: {name: none, rules: []}
            expect: {text: ok, media: ok, calls: ok, web: ok, registration: ok}
        """))
    scenario = load_phases(tmp_path / "old.yaml")
    assert scenario.probes == ("whatsapp",) and set(scenario.phases[0].expect["whatsapp"]) == {
        "text", "media", "calls", "web", "registration"}


SERVICES_PHASES = textwrap.dedent(
    """\
    name: two-services
    probes: [whatsapp, telegram]
    options: {whatsapp: {opening: 2017}, telegram: {throughput: "off"}}
    phases:
      - id: normal
        policy: {name: none, rules: []}
        expect:
          whatsapp: {text: ok, media: ok, calls: ok, web: ok, registration: ok}
          telegram: {text: ok, media: ok, web: ok}
    """
)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("{opening: 2017}", "{opening: 2016}", r"phases.yaml:3: options.whatsapp.opening: whatsapp: opening must be one of"),
        ('{throughput: "off"}', "{throughput: slow}", r"phases.yaml:3: options.telegram.throughput: .*must be one of on, off"),
        ("probes: [whatsapp, telegram]", "probes: [whatsapp, telegraph]", r"phases.yaml:2: probes: no nettest 'telegraph'"),
        ("      telegram: {text: ok, media: ok, web: ok}\n", "",
         r"phases.yaml:7: phases\[0\].expect.telegram: no ground truth for probed service 'telegram'"),
        ("{text: ok, media: ok, web: ok}", "{text: ok, media: ok}",
         r"phases.yaml:9: phases\[0\].expect.telegram: no ground truth for feature 'web'"),
        ("{text: ok, media: ok, web: ok}", "{text: ok, media: ok, web: ok, calls: ok}",
         r"phases.yaml:9: phases\[0\].expect.telegram.calls: telegram has no feature 'calls'"),
        ("      telegram:", "      signal: {text: ok}\n      telegram:", r"phases.yaml:9: phases\[0\].expect.signal: 'signal' is not in `probes`"),
    ],
)
def test_the_demos_services_and_options_are_checked_naming_line_and_key(tmp_path: Path, old: str, new: str,
                                                                         message: str) -> None:
    """The demo's every-service format goes through the same strict loader and the same option checks
    as a scenario's: each mistake named at its line before any lab is built."""
    from wallwatch.lab.demo import load_phases

    scenario = tmp_path / "phases.yaml"
    scenario.write_text(SERVICES_PHASES)
    loaded = load_phases(scenario)
    assert loaded.probes == ("whatsapp", "telegram") and loaded.options["whatsapp"] == {"opening": "2017"}
    assert old in SERVICES_PHASES
    scenario.write_text(SERVICES_PHASES.replace(old, new, 1))
    with pytest.raises(ScenarioError, match=message):
        load_phases(scenario)
