"""Calibration of the cost model's device figures against measured runs (pure)."""

from __future__ import annotations

import math

from .costmodel import CallPlan, Comm, Device, Links, comm, predict

Sample = tuple[CallPlan, Links, bool, float]  # plan, links, overlap, measured fwd+bwd seconds


def _loss(dev: Device, samples: list[tuple[Sample, Comm]], delta: float = 0.05) -> float:
    """Soft-L1 of e = log(predicted / measured): e²/2 near 0, |e| beyond ~delta. Relative, and
    robust to a run that a burst of other work on the machine slowed down (a squared loss
    would bend the fit towards it), yet smooth for the search."""
    total = 0.0
    for (plan, links, overlap, seconds), cm in samples:
        p = predict(plan, dev, links, overlap, cm)
        e = math.log((p.fwd_s + p.bwd_s) / seconds) / delta
        total += math.sqrt(1 + e * e) - 1
    return total


def fit_device(name: str, samples: list[Sample]) -> Device:
    """The Device whose predictions of the samples' fwd+bwd seconds have the least (soft-L1)
    log error, with one kernel rate for both directions (backward FLOPs counted 2.5×
    forward) and a cost per call: a log grid, then a pattern search with shrinking steps.
    Two parameters only, so most runs (modes × lengths × ratios) test the model rather than
    fit it."""
    if not samples:
        raise ValueError(f"fit_device({name}): no samples")

    with_comm = [(sm, comm(sm[0], sm[1])) for sm in samples]

    def loss(rc: tuple[float, float]) -> float:
        return _loss(Device(name, rc[0], rc[0], rc[1]), with_comm)

    calls = [0.0] + [10.0**-j for j in range(1, 7)]  # 0, 1 µs .. 100 ms
    rates = [10 ** (7 + i / 3) for i in range(19)]  # 10 MFLOP/s .. 10 TFLOP/s
    best = min(((f, c) for f in rates for c in calls), key=loss)
    step, here = 2.0, loss(best)
    for _ in range(100):  # bounded: a flat direction (no cost per call) must not creep forever
        if step < 1.001:
            break
        moves = [(best[0] * a, max(best[1], 1e-7) * b if b != 1 else best[1]) for a in (1 / step, 1, step)
                 for b in (1 / step, 1, step)]  # fmt: skip
        new = min(moves, key=loss)
        if (there := loss(new)) < here * (1 - 1e-6):
            best, here = new, there
        else:
            step = step**0.5
    return Device(name, best[0], best[0], best[1])
