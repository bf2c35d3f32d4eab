"""The digest of the parts of a service's policy that decide whether and when medkit may act."""

from __future__ import annotations

import hashlib
import json

from models.policy import ServicePolicy

SAFETY_FIELDS = frozenset({"ladders", "assessment", "retry", "budgets", "exclusive", "fleet"})
"""Which rungs run at which severity and with which approvals, how many attempts, the action
budgets and the lease rules: a snapshot that changes any of them changes what medkit does
without changing one action's spec, so the worker compares them as a whole. (`dry_run` is
checked on its own: a simulated action is harmless, a real one on a dry-run worker is not.)"""


def safety_digest(policy: ServicePolicy) -> str:
    """The sha256 (hex) of the canonical JSON of the policy's SAFETY_FIELDS.

    A recovery computes it from the snapshot in its input (in workflow code, which the worker
    owns) and sends it with every action; the worker refuses an action whose digest is not the
    one of its own policy file, so a forged or outdated snapshot cannot drop an approval or a
    budget.
    """
    fields = policy.model_dump(mode="json", include=set(SAFETY_FIELDS))
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
