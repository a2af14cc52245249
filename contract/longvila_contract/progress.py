"""Training progress as Prometheus metrics: the names the trainer exports on global rank 0
(at env.METRICS_PORT, path METRICS_PATH) and the operator reads into status.progress and
its hang check. Pure; tests/unit/test_progress.py holds both sides together.
"""

from __future__ import annotations

METRICS_PATH = "/metrics"
STEP = "longvila_train_step"  # optimizer steps completed in this stage (the resumed step at start)
MAX_STEPS = "longvila_train_max_steps"  # the stage's length (0 until known)
LOSS = "longvila_train_loss"  # the last step's mean loss over the global batch
TOKENS_PER_SECOND = "longvila_train_tokens_per_second"  # the last step's LLM tokens / wall seconds
STEP_SECONDS = "longvila_train_step_seconds"  # the last step's wall time
CHECKPOINT_STEP = "longvila_train_checkpoint_step"  # the newest complete checkpoint's step (0: none)
STEPS = "longvila_train_steps"  # a counter: steps this process completed (0 while starting up)
GAUGES = (STEP, MAX_STEPS, LOSS, TOKENS_PER_SECOND, STEP_SECONDS, CHECKPOINT_STEP)
COUNTERS = (STEPS,)
