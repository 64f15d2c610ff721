"""A fleet on one etcd (SEMANTICS section 10): membership from bindings and registrations, the
fleet document and its publication (``sgagent fleet``), and an agent's registration."""
