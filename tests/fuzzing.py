"""Hypothesis profiles: the suite's everyday example counts, and a fuzz run for CI.

`WALLWATCH_HYPOTHESIS_PROFILE=fuzz` (scripts/test.sh sets it, so CI's run has it)
raises every parser property test to at least `FUZZ_EXAMPLES` examples; a targeted
`pytest` run keeps each test's own count. Property tests write
`@settings(max_examples=examples(400))`: an explicit count in `@settings` wins over
a profile, so the count asks the loaded profile for its floor.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

PROFILE_VARIABLE = "WALLWATCH_HYPOTHESIS_PROFILE"
# Measured 2026-12-04 (2 shared CPUs): the property tests of tests/protocols, censor/test_inet,
# test_analyzers, test_engine and lab/test_stun take 25.5 s of CPU at this floor against 7.8 s at
# their own counts (+18 s; +26 s wall on a loaded machine). A one-off run at 20,000 examples of the
# mtproto, whatsapp and QUIC ones found nothing.
FUZZ_EXAMPLES = 1000

settings.register_profile("fuzz", max_examples=FUZZ_EXAMPLES, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get(PROFILE_VARIABLE, "default"))


def examples(count: int) -> int:
    """A property test's example count: its own, or the loaded profile's if that is higher."""
    return max(count, settings.default.max_examples)
