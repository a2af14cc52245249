"""The LongVILAJob operator: a pure core (api, placement, children, validation) under a thin kopf shell."""
