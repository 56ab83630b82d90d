"""What a tenant job may do to a tenant in a given state. Every job re-reads the tenant when it
runs (it may have been queued behind another run that changed it) and asks this first.

The API refuses a request the state does not allow; a run still checks, because the state it
was accepted in may be gone by the time it runs (a scale queued behind a suspend, a provision
queued behind a delete).
"""

from typing import Literal

TenantJob = Literal["provision", "scale", "suspend", "resume", "delete", "promote", "upgrade"]
# act: do the work; record: write the change to the catalog but leave the stack as it is (a
# suspended tenant stays stopped; its next resume starts it as recorded); skip: nothing to do,
# the tenant already is where the job would put it; refuse: fail the run, changing nothing.
Verdict = Literal["act", "record", "skip", "refuse"]

_VERDICTS: dict[TenantJob, dict[str, Verdict]] = {
    "provision": {"provisioning": "act", "failed": "act", "active": "act"},
    "scale": {"active": "act", "failed": "act", "suspended": "record"},
    "suspend": {"active": "act", "failed": "act", "suspended": "act"},
    "resume": {"suspended": "act", "failed": "act", "active": "skip"},
    # A promotion (or its rollback) marks the tenant `promoting` when it is requested.
    "promote": {"promoting": "act"},
    # An upgrade (or its rollback) marks the tenant `upgrading` when it is requested.
    "upgrade": {"upgrading": "act"},
    "delete": {
        "provisioning": "act", "active": "act", "suspended": "act", "failed": "act",
        "deleting": "act", "deleted": "act",
    },
}  # fmt: skip


class Refused(Exception):
    """A run the tenant's current state does not allow: it fails, having changed nothing."""

    def __init__(self, job: TenantJob, slug: str, status: str) -> None:
        super().__init__(f"{job} refused: tenant {slug} is {status}")
        self.job, self.slug, self.status = job, slug, status


def verdict(job: TenantJob, status: str) -> Verdict:
    """Any state a job does not name (deleting, deleted, promoting, upgrading …) refuses it."""
    return _VERDICTS[job].get(status, "refuse")


def autoscale_verdict(status: str) -> Verdict:
    """The autoscaler's own scale runs: only a serving tenant is resized; anything else is left
    alone (no failed run for a tenant that was suspended while the decision was queued)."""
    return "act" if status == "active" else "skip"
