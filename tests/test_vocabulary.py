"""One vocabulary: every verdict and method the probe can emit is stored by ingest as it was said.

Before the vocabulary was one module the probe said `tls_mitm` and the
pipeline, which did not know the word, stored `unknown`
(`wallwatch.invalid_feature_verdict`): a blocked feature lost on the way.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from wallwatch.analysis.ingest.pipeline import ingest
from wallwatch.analysis.store import Store
from wallwatch.lab.scenario import KNOWN_FEATURES, Expectation
from wallwatch.probe.measurement import append_jsonl, build_measurement
from wallwatch.probe.verdicts import RULES_VERSION, TargetVerdict, aggregate_feature
from wallwatch.vocabulary import NETTEST_FEATURES, VERDICTS, Method, Throttling, is_finding, qualifiers

# Every (verdict, method) pair a probe rule may name: blocked with each method, throttled with each
# kind of degradation, the others with none.
EMITTABLE = [(verdict, word) for verdict in VERDICTS for word in qualifiers(verdict)] + [
    (verdict, None) for verdict in VERDICTS if not qualifiers(verdict)
]


def _measurement(index: int, verdict: str, method: str | None) -> dict:
    """A whatsapp measurement whose text feature the probe's own aggregation judged `verdict/method`."""
    target = TargetVerdict("e1.whatsapp.net:443", verdict, f"test.{verdict}", "evidence", method,
                           confidence=0.9, strong=True)
    features = {"text": aggregate_feature("text", [target])}
    started = dt.datetime(2017, 9, 20, 12, 0, 0) + dt.timedelta(minutes=index)
    return build_measurement({"x_wallwatch": {"rules_version": RULES_VERSION, "features": features}},
                             test_name="whatsapp", test_version="0.1.0", started_at=started, runtime=1.0,
                             probe_asn="AS4134", probe_cc="CN")


def test_every_verdict_and_method_the_probe_can_emit_survives_ingest(tmp_path: Path) -> None:
    path = tmp_path / "measurements.jsonl"
    said = {}
    for index, (verdict, method) in enumerate(EMITTABLE):
        measurement = _measurement(index, verdict, method)
        said[measurement["report_id"]] = (verdict, method)
        append_jsonl(path, measurement)
    summary = ingest([path], tmp_path / "data", workers=1)
    assert summary.quarantined == 0 and summary.stored == len(EMITTABLE)
    stored = {row["probe_key"].removeprefix("report:"): (row["verdict"], row["method"])
              for row in Store(tmp_path / "data").read("verdicts").to_pylist()}
    assert stored == said


@pytest.mark.parametrize(("verdict", "method"), [
    ("maybe", None),  # not a verdict
    ("blocked", "tls_interception"),  # not a method
    ("blocked", None),  # blocked says how
    ("ok", "dns"),  # only blocked names a method
    ("throttled", None),  # throttled says how too
    ("throttled", "dns"),  # ... with a kind of degradation, not a blocking method
    ("blocked", "rate"),  # and a blocked verdict never names one
])
def test_the_probe_refuses_words_outside_the_vocabulary(verdict: str, method: str | None) -> None:
    with pytest.raises(ValueError):
        TargetVerdict("e1.whatsapp.net:443", verdict, "test.rule", "evidence", method)


def test_every_method_says_what_evidence_it_needs_in_code_and_in_words() -> None:
    for word in (*Method, *Throttling):
        assert len(word.evidence) > 40 and word.plain and word.plain != word.value


def test_emittable_covers_throttling_and_residual() -> None:
    assert ("throttled", "rate") in EMITTABLE and ("blocked", "residual") in EMITTABLE
    assert all(is_finding(verdict, method) for verdict, method in EMITTABLE)


def test_the_lab_checks_ground_truth_against_the_same_words() -> None:
    assert KNOWN_FEATURES == {nettest: tuple(features) for nettest, features in NETTEST_FEATURES.items()}
    for verdict, method in EMITTABLE:
        text = f"{verdict}/{method}" if method else verdict
        assert str(Expectation.parse(text)) == text


def test_every_service_the_rules_judge_is_a_named_service() -> None:
    """The services a command can name (`--service`) are the ones classify() gives OONI's nettests."""
    from wallwatch.analysis.verdicts.observations import classify
    from wallwatch.vocabulary import Service

    seen = {classify(test, None, host, None, port, []).service
            for test in ("web_connectivity", "whatsapp", "telegram", "signal", "facebook_messenger", "vanilla_tor",
                         "openvpn", "riseupvpn", "wechat", "viber", "skype", "facetime", "keyword", "circumvention")
            for host, port in (("e1.whatsapp.net", 443), ("web.telegram.org", 443), ("sfu.voip.signal.org", 443),
                               ("b-api.facebook.com", 443), (None, None))}
    assert seen == {service.value for service in Service}
    assert all(service.plain for service in Service)


def test_every_word_of_both_branches_is_there_once() -> None:
    """Issue 12 was built on two branches: each enum must hold every word of both, once (a value
    written twice would silently become an alias of the first member)."""
    from enum import StrEnum

    from wallwatch import vocabulary as v

    enums = [obj for obj in vars(v).values() if isinstance(obj, type) and issubclass(obj, StrEnum)
             and obj is not StrEnum]
    for enum in enums:
        assert len(enum.__members__) == len({member.value for member in enum}), enum.__name__
    assert {"middlebox", "platform_filter", "residual"} <= set(v.METHODS)
    assert set(v.THROTTLINGS) == {"rate", "latency", "jitter"} and not set(v.THROTTLINGS) & set(v.METHODS)
    assert "throttled" in v.VERDICTS and "throttled" in v.SERIES_STATES
    assert {"keywords", "resolver", "ech"} <= set(v.FEATURES)
    assert {"telegram", "signal", "facebook_messenger", "keyword", "circumvention"} <= set(v.NETTEST_FEATURES)
    # Every verdict and state has its plain words, throttled included.
    for word in (*v.Verdict, *v.State):
        assert word.plain and word.plain != word.value
    assert all(word.plain for word in (*v.Service, *v.Circumvention))  # names: "obfs4" is its own
    assert v.qualifier_plain("rate") == v.Throttling.RATE.plain and v.qualifier_plain("residual") == v.Method.RESIDUAL.plain
