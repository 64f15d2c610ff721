"""Generated documents as the iptables backend takes them today: without audit rules
(SEMANTICS section 9), which it refuses (it renders flow logs); the draws are made all the
same, so a test sees the same documents otherwise."""

from __future__ import annotations

import copy


def without_audit(raw: dict) -> dict:
    doc = copy.deepcopy(raw)
    for g in doc.get("security_groups", {}).values():
        # an audit rule never decides: leaving it out changes no verdict
        g["rules"] = [r for r in g.get("rules", []) if r.get("mode") != "audit"]
    return doc
