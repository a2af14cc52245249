"""Phase and condition names of a LongVILAJob's status, shared by the operator (which writes
them), the CRD's enums, the demo and tests (which read them). Pure."""

from __future__ import annotations

PENDING = "Pending"
RUNNING = "Running"
RESTARTING = "Restarting"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
SUSPENDED = "Suspended"
UNSCHEDULABLE = "Unschedulable"  # a condition only, never a phase

PHASES = (PENDING, RUNNING, RESTARTING, SUCCEEDED, FAILED, SUSPENDED)
STAGE_PHASES = (PENDING, RUNNING, RESTARTING, SUCCEEDED, FAILED)
TERMINAL = (SUCCEEDED, FAILED)
# Condition types, in the order status lists them.
CONDITION_TYPES = (RUNNING, RESTARTING, UNSCHEDULABLE, SUSPENDED, SUCCEEDED, FAILED)
