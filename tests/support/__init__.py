"""Helpers shared by the test tiers (imported as ``tests.support.<module>``).

- ``components``: find and start the real components (PostgreSQL, nats-server) behind the
  fixtures in ``tests/conftest.py``; skip on a developer machine, fail in CI, when missing.
- ``eventually``: poll for an eventually-consistent outcome within a time budget.
- ``chain``: the whole detection chain (collector process -> gRPC -> analyser -> NATS) from
  one rendered config, for the full-chain detector tests.
- ``workloads``: background database workloads and held sessions (idle in transaction,
  locks, queries in a loop) that detectors and remediations are tested against.

Other modules here (the Kubernetes control plane, ...) document themselves.
"""
