"""Shared test configuration."""

# Registers the hypothesis profiles and loads the one $WALLWATCH_HYPOTHESIS_PROFILE names,
# before any test module is imported (tests/fuzzing.py).
import tests.fuzzing  # noqa: F401
