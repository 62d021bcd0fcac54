"""The probe: measurement primitives that log OONI-format events, and the nettests.

Public API
----------
* `wallwatch.probe.nettests.whatsapp`:
  `measure_whatsapp(config, settings, *, probe_asn, probe_cc, publish_ip) -> measurement`
  (one complete OONI-format measurement), `run_whatsapp(config, settings) -> test_keys`
  (async), `default_config(settings, step_timeout=None)`, `WhatsAppConfig`, `Timeouts`.
* `wallwatch.probe.nettests.openvpn`:
  `measure_openvpn(config, settings, *, stamp) -> measurement`, `run_openvpn(config, settings)`
  (async, test_keys), `OpenVpnTarget.parse("openvpn://NAME/?address=IP:PORT&transport=udp|tcp")`,
  `make_config(targets, step_timeout=None)`, `lab_targets(settings)` (the lab state file's
  `vpn_servers.openvpn` = {address, port, transports}), `HandshakeState` (the sans-IO client side).
* `wallwatch.probe.nettests.telegram`, `.signal`, `.facebook_messenger`, `.wechat`, `.skype`,
  `.viber`, `.facetime`, `.keyword`: `run_once(...)`,
  each a `wallwatch.probe.nettests.base.ServiceTest` (sessions with payload controls, HTTPS
  with SNI controls, STUN, a DNS control); features, endpoints and OONI keys in docs/services.md.
  Their `x_wallwatch` holds `rules_version` ("wallwatch-<nettest>-verdicts/2"), `features`,
  `sessions` (the shape of `chat_sessions` below, plus `feature`, `completed`), `fetches`,
  `udp_exchanges`, `controls`, `throughput`, `expected_networks`, `lab`; keyword's also `platform`
  and `canaries` (per keyword: the ids, HTTP statuses and delivery of its message and its twin).
  `Common.throughput` (a `base.Throughput`: bulk objects per transfer feature, timed call
  features) is the hook that times features against a control, as whatsapp's media, web and
  calls are timed; `--option throughput=on` turns it on for telegram, signal and
  facebook_messenger (their lab servers serve the objects).
* `wallwatch.probe.nettests.web_connectivity`: `run_inputs(...) -> [measurement]` (one per URL,
  `input` = the URL; targets, else the shipped `lists/cn-2017.txt`), `measure_urls(urls, config,
  settings, on_done)` (async, at most `parallelism` at once), `read_list(text)` (OONI's input-file
  format), `call_helper`; `webdiff.classic_keys(facts, control)`: OONI's classic conclusions.
* `wallwatch.probe.nettests.circumvention`: `measure_circumvention(config, settings, *, stamp)`,
  `run_circumvention` (async, test_keys), `CircumventionConfig(servers=lab_servers(settings))`.
  Its `x_wallwatch` holds `rules_version` ("wallwatch-circumvention-verdicts/1"), `features`
  (one per option tried: openvpn_udp, openvpn_tcp, wireguard, shadowsocks, obfs4, tor,
  tor_obfs4; verdict ok|blocked|down|unknown with the usual shape), `summary` (which options
  worked, and how the others were stopped, in words), `options` (per option the facts: `kind`,
  `address`, `client`, `stage_reached`, `failure`, `failed_at`, `control` {outcome answered|
  closed|delivered|silent|reset|connect_failed, failure}, `timings`, and per kind
  `openvpn_handshake`, `latest_handshake`/`bytes_received` (WireGuard), `http_status`,
  `bootstrap`/`bootstrap_tag`/`directory_answer`/`problem` (Tor), `client_log`),
  `openvpn_handshakes`, `controls`, `lab`.
* `wallwatch.probe.measurement.Stamp(probe_asn, probe_cc, probe_network_name, measurement_time,
  annotations, publish_ip)`: the envelope options of every nettest (`measure_whatsapp(..., stamp=)`,
  `measure_openvpn(..., stamp=)`); `parse_measurement_time("YYYY-MM-DD hh:mm:ss")`,
  `parse_annotations(["k=v", ...])`. CLI: `wallwatch probe run NETTEST --measurement-time ...
  --probe-network-name ... --annotation k=v --probe-asn ... --probe-cc ...`.
* `wallwatch.probe.settings.ProbeSettings.from_environment()`: lab mode when
  `WALLWATCH_LAB` names a lab state file (lab resolver, lab CA only, address map),
  else the system resolver and CA store.
* `wallwatch.probe.verdicts.derive_features(nettest, test_keys) -> dict`: any messaging
  nettest's per-feature verdicts; `derive_whatsapp_features(test_keys) -> dict`: the
  per-feature verdicts, a pure function of the recorded facts (`RULES_VERSION`);
  `derive_openvpn_features(test_keys)` likewise for the `tunnel` feature
  (`OPENVPN_RULES_VERSION`); `derive_keyword_features(test_keys)` for the keyword nettest's
  `keywords` feature: the network's verdict if the platform could not be reached, else
  `blocked/platform_filter` for messages accepted and withheld while their twins arrived.
* `wallwatch.probe.primitives`: `resolve_udp`, `resolve_system`, `tcp_connect`,
  `tls_handshake`, `http_request`, `udp_exchange`, `tls_sni_control`,
  `first_flight_control`, all recording into a `wallwatch.probe.trace.Trace`.
* `wallwatch.probe.throughput`: `https_rounds(trace, HttpsTarget(...), target_context=,
  control_context=)` and `udp_rounds(trace, feature, ip, port, control_port=, make_request=)`:
  the feature's traffic against a control on the same path; `verdicts.judge_throughput(record)`
  and `verdicts.apply_throttling(feature_result, judgments)` turn them into `throttled` verdicts.
* `wallwatch.probe.measurement`: `build_measurement`, `append_jsonl`, `scrub_addresses`.

Measurement contract (what the pipeline ingests)
------------------------------------------------
One OONI data-format measurement per JSONL line (df-000 base keys,
`data_format_version` "0.2.0", `software_name` "wallwatch", `probe_ip`
"127.0.0.1" unless `--publish-ip`; the probe's own addresses are scrubbed as
"[scrubbed]" everywhere else). With `--measurement-time` (scenario replays)
`measurement_start_time`, `test_start_time` and the report id's date are that
simulated UTC time and `annotations.wallwatch_wall_time` is the real start;
`--probe-network-name` fills `probe_network_name`; `--annotation k=v` adds to
`annotations` (engine_name, engine_version, platform, wallwatch_wall_time
are reserved). A whatsapp measurement's `test_keys` holds:

* OONI's whatsapp keys with probe-cli 0.11.0 semantics
  (`registration_server_status`/`_failure`, `whatsapp_web_status`/`_failure`,
  `whatsapp_endpoints_status`, `whatsapp_endpoints_blocked`,
  `whatsapp_endpoints_dns_inconsistent`), plus `agent`, `failure`, `failed_operation`;
* the event arrays `queries` (with `x_dns_duplicate_responses`: late answers to
  the same query, the trace of an injector racing the resolver), `tcp_connect`,
  `tls_handshakes`, `requests`, `network_events`. Every entry has `t0`, `t`
  (seconds since the measurement started), `transaction_id` and `tags`:
  `feature:<text|media|calls|web|registration>` and `endpoint:<host>:<port>`;
  entries made by controls also carry `control:<dns|tls_sni|payload>` and share
  the transaction id of the attempt they control;
* `x_wallwatch`: `rules_version` ("wallwatch-whatsapp-verdicts/3"), `opening` (the chat
  client's era: 2017, 2022 or today), `features`
  (per feature: `verdict` ok|blocked|throttled|down|unknown, `method` dns|tcp_ip|
  tcp_reset|tls_sni|tls_mitm|protocol_dpi|udp_blocking|residual (blocked) or
  rate|latency|jitter (throttled) or null, `confidence`,
  `rule`, `evidence`, `targets_ok`, `targets_total`, `partial`,
  `blocked_share`), `chat_sessions` (per text target: `host`,
  `port`, `transaction_id`, `address`, `stage_reached`
  dns|connect|header_sent|handshake|echo|null, `failed_at`, `failure`,
  `timings`, `first_flight_size`, `control`), `fetches` (per HTTPS attempt:
  `feature`, `url`, `method`, `transaction_id`, `failure`, `failed_at`,
  `status`, `body_length`, `address`), `udp_exchanges`, `controls` (`kind`, `address`,
  `outcome` answered|closed|silent|reset|connect_failed|answered_not_tls,
  `failure`), `expected_networks`, `lab` ({run_id, resolver} or null),
  `throughput` (per feature measured after the reachability attempts:
  `kind` https|udp, `feature`, `endpoint`, `address`, `control_name` or
  `control_port`, `rounds` [{`round`, `size`, `target`, `control`}], each side
  with `rtt_ms` [...], and for HTTPS `server_name`, `connect_s`,
  `handshake_s`, `status`, `bytes`, `counted_bytes`, `seconds` (without loss-recovery stalls), `stalled_s`,
  `goodput_bps`, `transfer_s`, `failure`, `failed_at`; `probe/throughput.py`).
  A feature measured so also carries `throttling` (`verdicts.judge_throughput`:
  `throttled` rate|latency|jitter|null, `rate_bps`, `control_rate_bps`,
  `rate_ratio`, `latency_ms`, `control_latency_ms`, `added_latency_ms`,
  `jitter_ms`, `control_jitter_ms`, `rounds`, `flagged`, `rule`, `evidence`),
  and its verdict is `throttled` with `method` the kind when a kind is named
  and the feature otherwise worked (or only timed out after TLS). Entries of
  the OONI arrays made by the rounds are tagged `throughput:target|control`.

An openvpn measurement (`test_name` "openvpn", `input` = the target URI when
there is one target) holds OONI's openvpn keys `success`, `failure`,
`network_events`, `tcp_connect`, `openvpn_handshake` (endpoint
openvpn://ip:port/transport, ip, port, transport, provider, status), the DNS
control in `queries` (only with a configured resolver: lab mode), and
`x_wallwatch`: `rules_version` ("wallwatch-openvpn-verdicts/2"), `features`
({"tunnel": same shape as above}), `openvpn_handshakes` (per target:
`provider`, `uri`, `endpoint`, `address`, `transport`, `transaction_id`,
`client_session_id`, `stage_reached` connect|client_reset_sent|server_reset|
client_hello_sent|server_tls|null, `failed_at` connect|server_reset|
server_tls|null, `failure`, `server_tls` server_hello|alert|other|null,
`server_session_acked`, `packets_sent`, `packets_received`,
`opcodes_received`, `foreign_packets`, `timings`, `control` {outcome,
failure} for TCP failures), `controls`, `lab`. Network events carry the tags
`feature:tunnel`, `endpoint:<ip>:<port>`, `transport:<udp|tcp>`. Tunnel
methods: `protocol_dpi` (the flow died after the server's reset, or a TCP
flow died on the client reset while a same-size control passed), `tcp_ip`/
`udp_blocking` (nothing reaches the address while other paths work: weak),
`tcp_reset`.

A web_connectivity measurement (`test_version` "0.4.3": the classic keys of
[ooni-spec] ts-017) holds OONI's keys only: `agent`, `client_resolver` (null),
the event arrays (`queries` with `x_dns_duplicate_responses`, `tcp_connect`
whose `status` has ts-017's `blocked`, `tls_handshakes`, `requests` newest
first, `network_events`), `control` (the helper's response, or {}),
`control_failure`, `dns_experiment_failure`, `http_experiment_failure`,
`dns_consistency`, `body_proportion`, `body_length_match`, `status_code_match`,
`headers_match`, `title_match`, `blocking` (dns | tcp_ip | http-failure |
http-diff | false | null), `accessible`; the envelope's `test_helpers` names
the helper; `x_wallwatch` has `helper` and `lab`, and no `features`: the
pipeline judges it with its rule set.

Partial and intermittent blocking (rules/2, `verdicts.py` docstring): a
feature is `blocked` as soon as one target shows *strong*, control-verified
interference (a racing or out-of-network DNS answer whose flow failed; a
reset/timeout after the ClientHello while the control SNI was answered; a
reset/timeout after the WhatsApp header while the same-size control to the
same address:port passed, or was black-holed right after the reset: the
penalty box), even if other targets worked. Then `partial` is true,
`blocked_share` = interfered targets / targets, and the confidence is scaled
by 0.5 + 0.5 x (strong targets / targets). Weak evidence (timeouts, resets
without a clean control, STUN silence) blocks a feature only when no target
worked. `blocked_share` is reported for every feature (0.0 when nothing was
interfered with); `partial` is true only on a blocked verdict with working
targets. Calls are `udp_blocking` when relays are silent while a TCP connect
succeeded *or* the resolver answered the control name over UDP.

Residual blocking (rules/3): a reset on the first bytes of an established
connection followed by the same address:port refusing new connections (the
control's connect times out, or another attempt's does) is method `residual`
(the penalty box, [Rambert2021]); under rules/2 it was `protocol_dpi`.
"""
