"""Helpers shared by the test tiers (imported as ``tests.support.<module>``).

- ``components``: find and start the real components (PostgreSQL, nats-server) behind the
  fixtures in ``tests/conftest.py``; skip on a developer machine, fail in CI, when missing.
- ``eventually``: poll for an eventually-consistent outcome within a time budget.
- ``chain``: the whole detection chain (collector process -> gRPC -> analyser -> NATS) from
  one rendered config, for the full-chain detector tests.
- ``workloads``: background database workloads and held sessions (idle in transaction,
  locks, queries in a loop) that detectors and remediations are tested against, and the
  ``orders`` seed of the missing-index workload.
- ``snapshots_build``: hand-built snapshots (and the window a detector judges) for the
  analyser's unit and component tests.
- ``operator_helpers``: the operator as a subprocess and the objects its e2e tests share
  (the fixtures that start it are in ``tests/e2e/conftest.py``).

Other modules here (the Kubernetes control plane, ...) document themselves.
"""
