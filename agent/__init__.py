"""sgagent: cloud-style security groups enforced with nftables."""

__version__ = "0.1.0"
