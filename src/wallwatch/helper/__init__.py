"""The web_connectivity test helper: a control vantage point outside the censor.

`wallwatch helper serve` answers OONI's test-helper API
(`wallwatch.protocols.webconnectivity`): given a URL and the endpoints a probe
resolved, it resolves the name itself, connects to every endpoint (with a TLS
handshake on 443), fetches the page, and says what it saw, so the probe can
tell censorship from a site that is down ([ooni-spec] ts-017; probe-cli's
`oohelperd`, [ooni-probe-cli]). It measures with the probe's own primitives
(a throwaway trace), so the helper and the probe see the network the same way.

It works on any network and never imports the lab or the censor: in the lab it
runs in the services namespace (reaching the lab's resolver and sites without
the censor in the way), started with `--network 198.19.0.0/16` so that the
lab's internet counts as public and nothing outside it is ever dialled.

* `measure.py` — one control measurement (`measure(request, config)`);
* `server.py` — the HTTP(S) server (h11 over asyncio streams);
* `cli.py` — `wallwatch helper serve`.
"""
