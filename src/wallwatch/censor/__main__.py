"""`python -m wallwatch.censor run ...`: the censor CLI without the rest of the house."""

from wallwatch.censor.cli import censor_app

censor_app()
