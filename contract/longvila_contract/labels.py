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
