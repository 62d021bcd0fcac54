"""The emulated Great Firewall: an NFQUEUE router with rules as data.

Packet path (OpenGFW's design, in Python; docs/architecture.md):

    iptables FORWARD -> WALLWATCH chain (iptables.py): connmark ACCEPT/DROP for decided
    flows, WALLWATCH_STATIC for blackhole-ip rules, NFQUEUE for the rest
    -> nfqueue.py (CensorService) -> engine.py (Censor.handle, sans-IO):
       protocols.inet -> flows.py -> analyzers/ -> policy.py -> actions.py

Techniques (issue 4), each citing its source where it is implemented:
    analyzers fet, openvpn, wireguard, mtproto, quic, tor (analyzers/), http.target + `contains`;
    rule options probability / residual / duration (policy.py, engine.py);
    action throttle: rate (htb class via connmark + CLASSIFY, shaping.py, iptables.py),
    delay_ms / jitter_ms (verdicts held in userspace, nfqueue.py). Example: policies/all-techniques.yaml.

Public API:
    wallwatch.censor.policy.load_policy(path) / parse_policy(yaml_or_dict) -> Policy  (PolicyError)
    wallwatch.censor.engine.Censor(policy, seed=N).handle(raw_ip_packet, now) -> actions.Decision
        (offline use needs no kernel: Decision.accept / .mark / .inject / .hold_until;
         Censor.penalties is the penalty box, Censor.snapshot() the counters)
    wallwatch.censor.nfqueue.CensorService(policy_path, queue_num=..., status_path=...).run()
    CLI: `wallwatch censor run --policy FILE [--queue N] [--status-file PATH] [--fail-open/--fail-closed] [--log FILE]
         [--seed N]`,
         `wallwatch censor check FILE`; also `python -m wallwatch.censor ...`.
"""
