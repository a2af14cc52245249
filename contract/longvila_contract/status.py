"""Phase and condition names of a LongVILAJob's status, shared by the operator (which writes
them), the CRD's enums, the demo and tests (which read them). Pure."""

from __future__ import annotations

PENDING = "Pending"
QUEUED = "Queued"  # the stage's pods wait for Kueue to admit their pod group (docs/kueue.md)
RUNNING = "Running"
RESTARTING = "Restarting"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
SUSPENDED = "Suspended"
UNSCHEDULABLE = "Unschedulable"  # a condition only, never a phase
ADMITTED = "Admitted"  # a condition only: Kueue admitted (True) or still queues (False, Kueue's reason)

PHASES = (PENDING, QUEUED, RUNNING, RESTARTING, SUCCEEDED, FAILED, SUSPENDED)
STAGE_PHASES = (PENDING, RUNNING, RESTARTING, SUCCEEDED, FAILED)
TERMINAL = (SUCCEEDED, FAILED)
# Condition types, in the order status lists them.
CONDITION_TYPES = (ADMITTED, RUNNING, RESTARTING, UNSCHEDULABLE, SUSPENDED, SUCCEEDED, FAILED)
