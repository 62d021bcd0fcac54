"""Stage 2, judgments: observations (facts per endpoint), then verdicts (rules over the facts).

`observations` turns one measurement into rows of DNS/TCP/TLS/HTTP facts;
`fingerprints` matches OONI's known blocking fingerprints (data in `data/`);
`rules` evaluates the versioned rule sets kept as YAML in `rulesets/`, each
verdict naming the rule that made it.
"""
