"""The SQL that reads state groups: each group's entries along its delta chain.

Shared by StateStore (which caches groups) and EventStore (the state before one event,
for federation answers), so the chain walk is written once.
"""

from __future__ import annotations


def chain_query(dialect_in_array: str, key_filter: str = "") -> str:
    """Every entry of the groups in the array parameter and of the groups their delta
    chains lead to, with each root group and its distance down the chain (oldest last)."""
    return (
        "WITH RECURSIVE chain (root, g, dist) AS ("
        "  SELECT sg.state_group, sg.state_group, 0 FROM state_groups sg"
        f"  WHERE {dialect_in_array}"
        "  UNION ALL"
        "  SELECT chain.root, sg.prev_group, chain.dist + 1 FROM state_groups sg"
        "  JOIN chain ON sg.state_group = chain.g WHERE sg.prev_group IS NOT NULL"
        ")"
        " SELECT chain.root, k.type, k.state_key, ev.event_id, chain.dist"
        " FROM chain"
        " JOIN state_group_entries sge ON sge.state_group = chain.g"
        " JOIN state_keys k ON k.key_nid = sge.key_nid"
        " JOIN events ev ON ev.event_nid = sge.event_nid"
        f"{key_filter}"
        " ORDER BY chain.root, chain.dist DESC"
    )
