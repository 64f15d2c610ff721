"""Flow logs (SEMANTICS section 9): the record a logged decision produces, the NFLOG reader that
turns the kernel's copies of packets into records, the file they are written to, and the
``sgagent logs`` reader."""
