"""Generated documents as the iptables backend takes them today: without audit rules
(SEMANTICS section 9), which it refuses (``without_audit``; ``without_flow_logs`` also drops
the flow logs); the draws are made all the same, so a test sees the same documents otherwise."""

from __future__ import annotations

import copy


def without_flow_logs(raw: dict) -> dict:
    doc = copy.deepcopy(raw)
    for g in doc.get("security_groups", {}).values():
        rules = []
        for r in g.get("rules", []):
            if r.get("mode") == "audit":
                continue  # an audit rule never decides: leaving it out changes no verdict
            r.pop("log", None)
            r.pop("log_rate", None)
            r.pop("mode", None)
            rules.append(r)
        g["rules"] = rules
    for nic in doc.get("host", {}).get("nics", []):
        nic.pop("log_default", None)
    return doc


def without_audit(raw: dict) -> dict:
    doc = copy.deepcopy(raw)
    for g in doc.get("security_groups", {}).values():
        # an audit rule never decides: leaving it out changes no verdict
        g["rules"] = [r for r in g.get("rules", []) if r.get("mode") != "audit"]
    return doc
