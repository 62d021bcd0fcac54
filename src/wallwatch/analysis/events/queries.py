"""The SQL behind event evidence (portable subset: SELECT/WHERE/GROUP BY)."""

from __future__ import annotations


def rule_counts_sql(by_feature: bool) -> str:
    """Verdicts of one state per rule for one network of an event; params cc, asn, service, onset, end,
    verdict ('blocked' for blocking events, 'throttled' for throttling ones)[, feature]."""
    feature = " AND feature = ?" if by_feature else ""
    return f"""
SELECT rule_id, count(*) AS n
FROM verdicts
WHERE probe_cc = ? AND probe_asn = ? AND service = ?
  AND measurement_start_time >= ? AND measurement_start_time < ?
  AND verdict = ?{feature}
GROUP BY rule_id
ORDER BY n DESC
"""
