"""The executor's engine: detection in, durable Remediation out, action run at most once.

Flow for one detection (docs/design.md#detection-and-remediation):

1. parse (malformed: counted and dropped); ignore ids already seen and other monitors;
2. at most one open Remediation per key, and one Remediation per occurrence (its name is
   derived from key and id, so two replicas collide on ``create`` and one wins);
3. re-derive the plan against the database (``executor/derive.py``); a key that recently
   ended without a fix is cooling down (recorded as Rejected, never retried in a loop);
4. record it in its first state (policy: Recommended, Observed, PendingApproval, Approved);
5. approved work starts when the hourly limit and maintenance window allow, after a
   compare-and-set Approved -> Running under a database-wide advisory lock, so the limit and
   the single runner hold across replicas; the action runs under its guard and the outcome
   with its numbers is recorded.

:meth:`Engine.tick` moves the rest along: rejections and approvals (hash checked), expiries,
gated starts, rollback requests, and work a previous executor left Running when it died.

Intake never waits for an action: a detection is done with (acked) once its Remediation is
recorded, and every start, verification and rollback runs as a background task of this engine
(one per record at a time), so a long action (an index build behind a before window) neither
holds a NATS message past its ack wait nor stalls the intake or the tick. :meth:`Engine.close`
cancels them on shutdown; an action cut short that way ends Failed ("interrupted"), as when a
dead executor leaves one Running.

This class is the facade; each seam lives in its own module, sharing one
:class:`~startupmonkey.executor.context.Context`:

- ``executor/admission.py``: steps 1-4 (:meth:`Engine.handle`);
- ``executor/runs.py``: step 5, claim, run and finish, as background tasks
  (:meth:`Engine.settle`, :meth:`Engine.close`), with ``executor/actions.py``, the table of
  the code that runs each action;
- ``executor/housekeeping.py``: the tick (pending approvals, verifications, rollbacks,
  orphaned and unplanned records);
- ``executor/metrics.py``: the Prometheus metrics.
"""

from __future__ import annotations

import prometheus_client

from startupmonkey import settings
from startupmonkey.executor import admission, context, housekeeping, records, runs
from startupmonkey.executor import metrics as executor_metrics
from startupmonkey.executor.context import Connect, EventSink

__all__ = ["Connect", "Engine", "EventSink"]


class Engine:
    """Turns detections into Remediations and runs the approved ones."""

    def __init__(self, config: settings.ComponentConfig, store: records.Store,
                 sink: EventSink, connect: Connect, identity: str,
                 registry: prometheus_client.CollectorRegistry) -> None:
        self.context = context.Context(config, store, sink, connect, identity,
                                       executor_metrics.Metrics(registry))
        self.runs = runs.Runs(self.context)
        self.admission = admission.Admission(self.context, self.runs)
        self.housekeeping = housekeeping.Housekeeping(self.context, self.runs)

    @property
    def config(self) -> settings.ComponentConfig:
        """The configuration in force (replaced by :meth:`reconfigure`)."""
        return self.context.config

    @property
    def store(self) -> records.Store:
        """Where the Remediations are recorded."""
        return self.context.store

    @property
    def identity(self) -> str:
        """Who this executor is (``POD_NAME``, else ``hostname:pid``)."""
        return self.context.identity

    @property
    def metrics(self) -> executor_metrics.Metrics:
        """The engine's Prometheus metrics."""
        return self.context.metrics

    def reconfigure(self, config: settings.ComponentConfig) -> None:
        """Hot reload: policy, thresholds, protect lists and limits apply from now on."""
        self.context.config = config

    async def handle(self, data: bytes) -> bool:
        """Handle one message. True: done with it (ack); False: redeliver later."""
        return await self.admission.handle(data)

    async def tick(self) -> None:
        """Approvals, expiries, gated starts and interrupted runs (call every interval)."""
        await self.housekeeping.tick()

    async def settle(self) -> None:
        """Wait until no start, verification or rollback of this engine is in flight."""
        await self.runs.settle()

    async def close(self) -> None:
        """Cancel the work in flight and wait for it (shutdown)."""
        await self.runs.close()
