"""Fault injection for tests: a kernel that refuses chosen transactions.

:class:`Faulty` wraps any kernel (the real one, the fake) and, for the transactions it is told
to refuse, appends one operation the kernel refuses -- deleting a chain that does not exist,
or, to a transaction of elements only, deleting an element of a set that does not exist -- so
that the wrapped kernel takes in everything else first and then rolls the whole transaction
back, as it would for a real refusal in the middle of a real transaction.  Everything else is
the wrapped kernel's.
"""

from __future__ import annotations

from typing import Any, Iterable

from .kernel import Executed, Kernel
from .transaction import DeleteChain, DeleteElements, Transaction

NO_SUCH_CHAIN = DeleteChain("sgagent_fault_no_such_chain")
NO_SUCH_ELEMENT = DeleteElements("sgagent_fault_no_such_set", "ipv4_addr", ("192.0.2.1",))


class Faulty:
    """``refusing``: refuse every transaction while True; ``refuse``: the numbers (1 for the
    first) of the transactions to refuse.  ``executed`` counts the transactions seen, and
    ``refused`` those this wrapper made fail."""

    def __init__(self, kernel: Kernel, *, refuse: Iterable[int] = (),
                 refusing: bool = False) -> None:
        self.inner = kernel
        self.refuse = set(refuse)
        self.refusing = refusing
        self.executed = 0
        self.refused = 0

    def execute(self, tx: Transaction, *, genid: int | None = None,
                dry_run: bool = False) -> Executed:
        self.executed += 1
        if self.refusing or self.executed in self.refuse:
            self.refused += 1
            tx = tx.plus(NO_SUCH_ELEMENT if tx.elements_only else NO_SUCH_CHAIN)
        return self.inner.execute(tx, genid=genid, dry_run=dry_run)

    def scratch(self) -> Kernel:
        return self.inner.scratch()  # a scratch kernel is not faulty

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
