"""Label and annotation keys on the objects the operator creates, read by the operator's
indexes, the local pod runner and people (`kubectl get pods -l longvila.io/job=NAME`). Pure."""

from __future__ import annotations

LABEL_JOB = "longvila.io/job"
LABEL_STAGE = "longvila.io/stage"
LABEL_NODE_RANK = "longvila.io/node-rank"
LABEL_ATTEMPT = "longvila.io/attempt"
ANNOTATION_NODE = "longvila.io/node"  # the planned node (also pinned by node affinity)
ANNOTATION_DOMAIN = "longvila.io/domain"  # its InfiniBand domain
NAME = "app.kubernetes.io/name"
MANAGED_BY = "app.kubernetes.io/managed-by"
APP = "longvila"
OPERATOR = "longvila-operator"

# Kueue's keys on the pods of a queued job (sigs.k8s.io/kueue pkg/controller/constants and
# pkg/controller/jobs/pod/constants at the version in localcluster/versions.toml; docs/kueue.md).
KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"  # label: the LocalQueue (also read on the LongVILAJob)
KUEUE_PRIORITY_CLASS = "kueue.x-k8s.io/priority-class"  # label: a WorkloadPriorityClass
KUEUE_GROUP = "kueue.x-k8s.io/pod-group-name"  # label: the pod group, and the Workload's name
KUEUE_GROUP_TOTAL = "kueue.x-k8s.io/pod-group-total-count"  # annotation: pods in the group
KUEUE_ROLE = "kueue.x-k8s.io/role-hash"  # annotation: the group's PodSet the pod counts in
KUEUE_RETRIABLE = "kueue.x-k8s.io/retriable-in-group"  # annotation: "false" = never refilled
KUEUE_GATE = "kueue.x-k8s.io/admission"  # scheduling gate Kueue holds until it admits the group
# Pod condition Kueue sets (reason WorkloadEvictedDueTo<Evicted reason>, e.g. …DueToPreempted)
# on every pod of a group it stops, just before it deletes them (pkg/controller/jobs/pod).
KUEUE_TERMINATION_TARGET = "TerminationTarget"
