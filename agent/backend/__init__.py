"""What every backend shares: the table as data (:mod:`.objects`), one transaction and the
diff that produces it (:mod:`.transaction`), the apply logic over a kernel
(:mod:`.applier`), the protocols a kernel and a backend implement (:mod:`.kernel`), and for
tests an in-memory kernel (:mod:`.fake`) with fault injection around any kernel
(:mod:`.faults`).  Nothing here speaks nftables or iptables: ``sgagent.nft`` renders the table
and executes transactions with libnftables and netlink; an iptables backend would render and
execute the same transactions its own way, against the same fake."""
