"""The iptables backend: the same plans as the nftables set rendering, as iptables chains and
ipsets, applied with ``iptables-restore --noflush`` and ``ipset restore``."""
