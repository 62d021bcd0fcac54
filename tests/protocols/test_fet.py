import datetime as dt

import pytest
from hypothesis import given, settings, strategies as st

from tests.fuzzing import examples
from wallwatch.protocols import fet
from wallwatch.protocols.errors import ProtocolError

# The 50 random bytes the authors appended to every fingerprint probe
# (usenixsecurity23-artifact, test-protocol-fingerprints/generate_fingerprints.py).
ARTIFACT_RANDOM = bytes.fromhex(
    "dadd034913c52da75fd9f05dc76803917134808efed97ef8884f2151b712f60fed634f609f132033a15b77ed3ccaa2d20f5b"
)


def oracle(data: bytes) -> bool:
    """A plain byte-by-byte restatement of detect.py's `exempted` expression."""
    printable = [0x20 <= b <= 0x7E for b in data]
    leading = next((i for i, p in enumerate(printable) if not p), len(data))
    longest = run = 0
    for p in printable:
        run = run + 1 if p else 0
        longest = max(longest, run)
    popcount = sum(bin(b).count("1") for b in data) / len(data)
    fraction = sum(printable) / len(data)
    tls = len(data) >= 3 and data[0] in (0x16, 0x17) and data[1] == 3 and data[2] < 0x10
    http = any(data.startswith(m) for m in (b"GET ", b"PUT ", b"POST ", b"HEAD "))
    return leading >= 6 or longest > 20 or popcount <= 3.4 or popcount >= 4.6 or fraction > 0.5 or tls or http


def test_artifact_random_payload_is_a_candidate() -> None:
    verdict = fet.detect(ARTIFACT_RANDOM)
    assert verdict.blocked_candidate
    assert verdict.exemption is None and verdict.exemptions == ()
    assert 3.4 < verdict.popcount_avg < 4.6
    assert verdict.length == 50


@pytest.mark.parametrize("third", range(0x00, 0x10))
@pytest.mark.parametrize("first", [0x16, 0x17])
def test_tls_fingerprint_exempts(first: int, third: int) -> None:
    verdict = fet.detect(bytes([first, 0x03, third]) + ARTIFACT_RANDOM)
    assert not verdict.blocked_candidate
    assert verdict.exemption == fet.EX5_PROTOCOL_FINGERPRINT and verdict.fingerprint == "tls"


@pytest.mark.parametrize("prefix", [b"\x15\x03\x01", b"\x16\x03\x10", b"\x16\x02\x01", b"\x14\x03\x03"])
def test_near_tls_prefixes_are_not_exempt(prefix: bytes) -> None:
    verdict = fet.detect(prefix + ARTIFACT_RANDOM)
    assert verdict.fingerprint is None and verdict.blocked_candidate


@pytest.mark.parametrize("method", [b"GET ", b"PUT ", b"POST ", b"HEAD "])
def test_http_fingerprint_exempts(method: bytes) -> None:
    verdict = fet.detect(method + ARTIFACT_RANDOM)
    assert verdict.exemptions == (fet.EX5_PROTOCOL_FINGERPRINT,)
    assert verdict.fingerprint == method.decode()


@pytest.mark.parametrize("almost", [b"GET/", b"POST", b"HEAD\t", b"OPTIONS "])
def test_other_methods_or_missing_space_do_not_exempt(almost: bytes) -> None:
    assert fet.detect(almost + ARTIFACT_RANDOM).fingerprint is None


def test_popcount_exemption_both_sides() -> None:
    low = fet.detect(bytes(50))
    high = fet.detect(b"\xff" * 50)
    assert low.exemption == fet.EX1_POPCOUNT and low.popcount_avg == 0
    assert high.exemption == fet.EX1_POPCOUNT and high.popcount_avg == 8


def test_popcount_boundary_is_inclusive() -> None:
    # 0x0f has 4 set bits, 0x07 has 3: 3 x 0x07 + 2 x 0x0f = 17 bits / 5 = 3.4 exactly.
    assert fet.detect(b"\x07\x07\x07\x0f\x0f").exemptions[0] == fet.EX1_POPCOUNT
    # 3.6 bits/byte and nothing printable: a candidate.
    assert fet.detect(b"\x07\x07\x0f\x0f\x0f").blocked_candidate


def test_printable_prefix_six_versus_five() -> None:
    six = fet.detect(b"abcdef" + ARTIFACT_RANDOM)
    five = fet.detect(b"abcde" + ARTIFACT_RANDOM)
    assert fet.EX2_PRINTABLE_PREFIX in six.exemptions and six.printable_prefix >= 6
    assert fet.EX2_PRINTABLE_PREFIX not in five.exemptions


def test_printable_run_twenty_one_versus_twenty() -> None:
    # Runs placed after a non-printable byte so only Ex4 can apply.
    base = b"\x80" + ARTIFACT_RANDOM * 2
    assert fet.detect(base[:40] + b"\xa0" + b"x" * 21 + b"\xa0" + base[40:]).exemptions == (fet.EX4_PRINTABLE_RUN,)
    assert fet.detect(base[:40] + b"\xa0" + b"x" * 20 + b"\xa0" + base[40:]).blocked_candidate


def test_printable_fraction_strictly_above_half() -> None:
    # Alternate printable / high non-printable bytes so no run and no prefix grows.
    half = b"".join(bytes([0x61, 0xB3]) for _ in range(25))  # exactly 50%
    more = half + b"\x61"
    assert fet.EX3_PRINTABLE_FRACTION not in fet.detect(half).exemptions
    assert fet.EX3_PRINTABLE_FRACTION in fet.detect(more).exemptions


def test_empty_payload_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        fet.detect(b"")


def test_real_protocols_are_exempt() -> None:
    from wallwatch.protocols.tls import build_client_hello

    assert not fet.detect(build_client_hello("example.org")).blocked_candidate
    assert not fet.detect(b"SSH-2.0-OpenSSH_9.2p1\r\n").blocked_candidate


def test_dynamic_blocking_dates() -> None:
    assert fet.dynamic_blocking_active(dt.date(2022, 8, 22))
    assert fet.dynamic_blocking_active(dt.date(2023, 3, 7))
    assert not fet.dynamic_blocking_active(dt.date(2023, 3, 15))
    assert not fet.dynamic_blocking_active(dt.date(2021, 1, 1))
    assert fet.BLOCK_PROBABILITY == 0.26 and fet.RESIDUAL_BLOCK_SECONDS == 180


@settings(max_examples=examples(500))
@given(st.binary(min_size=1, max_size=400))
def test_matches_the_plain_restatement(data: bytes) -> None:
    assert fet.detect(data).blocked_candidate is not oracle(data)


@settings(max_examples=examples(300))
@given(
    st.lists(st.sampled_from([bytes([b]) for b in range(0x20, 0x7F)] + [b"\x00", b"\x80", b"\xff"]), max_size=200)
)
def test_matches_on_mostly_printable_data(chunks: list[bytes]) -> None:
    data = b"".join(chunks) or b"\x00"
    assert fet.detect(data).blocked_candidate is not oracle(data)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_give_a_verdict_or_protocol_error(data: bytes) -> None:
    try:
        verdict = fet.detect(data)
    except ProtocolError:
        assert data == b""
        return
    assert isinstance(verdict, fet.FetVerdict)
    assert 0 <= verdict.printable_fraction <= 1 and 0 <= verdict.popcount_avg <= 8
