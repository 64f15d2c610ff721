"""The agent daemon: sources, reconcile loop, last known good, revocation, systemd.

* :mod:`.config` -- the validated config file (``sgagent run --config``);
* :mod:`.sources`, :mod:`.source_file`, :mod:`.source_https`, :mod:`.source_etcd` -- where
  documents come from;
* :mod:`.daemon` -- the reconcile loop (:func:`run`);
* :mod:`.state` -- last known good; :mod:`.restore` -- ``sgagent restore`` at boot;
* :mod:`.revoke` -- cutting connections the new rules refuse (SEMANTICS section 4);
* :mod:`.sdnotify` -- the systemd notification protocol.

See docs/DAEMON.md.
"""
