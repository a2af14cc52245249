"""What the LongVILA operator and trainer agree on, owned once and imported by both.

    env          the worker environment: the operator renders it, the trainer parses it
    stages       the stage-type table (preset, required spec fields, data kinds)
    config       the trainer config schema, layering and presets (presets/*.yaml)
    layout       ParallelLayout: every piece of sequence-parallel arithmetic
    uri          s3:// file:// synthetic:// URIs: regexes for CEL, parsing, resolving
    checkpoint   the checkpoint layout, manifests and a reader of a stage's checkpoints
    labels       label and annotation keys on child objects
    status       phase and condition names

Light on purpose: the standard library and PyYAML only (no torch, no Kubernetes client),
so the operator image stays small. Import-linter contracts in pyproject.toml keep it so.
"""
