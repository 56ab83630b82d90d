"""`InteractiveQueuedRunCoordinator`: Dagster's run queue, checked twice a second.

The queue stays what enforces one running job per tenant (`tag_concurrency_limits`); only the
wait between the daemon's looks at it shrinks. `dequeue_interval_seconds` accepts whole seconds,
and a tenant change an API caller is waiting on spent half a second on average (up to a full
one) queued behind an empty daemon tick. The daemon sleeps in 0.5 s steps between iterations, so
0.5 s is the shortest interval it can keep; an iteration with nothing queued is one indexed
query on the runs table.
"""

from dagster._core.run_coordinator.queued_run_coordinator import QueuedRunCoordinator

DEQUEUE_INTERVAL_S = 0.5


class InteractiveQueuedRunCoordinator(QueuedRunCoordinator):
    @property
    def dequeue_interval_seconds(self) -> float:  # type: ignore[override]
        return DEQUEUE_INTERVAL_S
