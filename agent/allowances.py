"""What is always allowed on a managed NIC (SEMANTICS section 5), shared by every stage."""

# Link-local ICMPv6 a host needs to keep its addresses: multicast listener query/report/done
# (130-132, 143) and router/neighbour solicitation/advertisement and redirect (133-137).
LINK_ICMPV6 = frozenset({130, 131, 132, 133, 134, 135, 136, 137, 143})

# DHCP client traffic: family -> (client port, server port).
DHCP_PORTS = {4: (68, 67), 6: (546, 547)}
