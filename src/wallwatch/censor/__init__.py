"""The emulated Great Firewall: an NFQUEUE router with rules as data.

Packet path (OpenGFW's design, in Python; docs/architecture.md):

    iptables FORWARD -> WALLWATCH chain (iptables.py): connmark ACCEPT/DROP for decided
    flows, WALLWATCH_STATIC for blackhole-ip rules, NFQUEUE for the rest
    -> nfqueue.py (CensorService) -> engine.py (Censor.handle, sans-IO):
       protocols.inet -> flows.py -> analyzers/ -> policy.py -> actions.py

Public API:
    wallwatch.censor.policy.load_policy(path) / parse_policy(yaml_or_dict) -> Policy  (PolicyError)
    wallwatch.censor.engine.Censor(policy).handle(raw_ip_packet) -> actions.Decision
    wallwatch.censor.nfqueue.CensorService(policy_path, queue_num=..., status_path=...).run()
    CLI: `wallwatch censor run --policy FILE [--queue N] [--status-file PATH] [--fail-open/--fail-closed] [--log FILE]`,
         `wallwatch censor check FILE`; also `python -m wallwatch.censor ...`.
"""
