"""The nftables backend: render the IR as an nftables ruleset, apply it, read its counters."""
