"""`longvila-train`: one stage of LongVILA training, launched by torchrun (or directly, one process).

    torchrun --module longvila_trainer.train            # in a pod: everything from the env contract
    longvila-train --preset tiny-short-sft --set checkpoint.uri=file:///tmp/ck   # one process

Order: env contract → config → layout checks (before any process group) → process group and
SP groups → model, trainable set, parallelize → optimizer → data → resume (latest complete
checkpoint of this stage, else the init checkpoint's weights) → loop → final checkpoint
(with LoRA: the adapters merged into the base weights, plain names) → final.json.
Any bad input ends the run with one `longvila-train: error: …` line and exit code 2; S3
still unreachable after the store's retries with `longvila-train: unavailable: …` and 3.
Either line, and a crash's, also goes to $LONGVILA_TERMINATION_LOG (the pod's termination
message), which is how the operator tells a permanent error from a restartable one
(longvila_contract.exits). Global rank 0 serves its progress on $LONGVILA_METRICS_PORT.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from longvila_contract import env as E
from longvila_contract import exits
from longvila_contract.checkpoint import ModelMeta
from longvila_contract.config import ConfigError, TrainerConfig, load_config, with_stage
from longvila_contract.layout import LayoutError, ParallelLayout
from longvila_contract.model import ModelConfigError, ModelFacts, tokens_per_frame
from longvila_contract.preflight import Fields, StageInput, preflight
from longvila_contract.uri import URIError
from torch.distributed import PrefixStore, TCPStore  # type: ignore[attr-defined]

from . import loop
from .build import model_for_run
from .checkpoint.s3 import StorageError
from .checkpoint.store import CheckpointNotFoundError, CheckpointStore
from .data.llava import RecordError
from .data.loader import (
    DataError,
    PackedLoader,
    build_loader,
    describe_data,
    open_stage_data,
    skip_counts,
    skip_problem,
)
from .data.media import MediaCache, MediaReader
from .data.tokenizer import load_tokenizer
from .engines import Engine, make_engine
from .fetch import local_copy
from .model.lora import MERGED, merge_lora_state, plain_names
from .model.materialize import MissingWeightsError
from .model.meta import (
    MetaError,
    check_media,
    check_shapes,
    checkpoint_meta_entry,
    inherit,
    meta_of,
    read_meta,
)
from .model.presets import PRESETS
from .model.weights import WeightsError, model_config
from .parallel.groups import build_groups
from .parallel.token_layout import Kind
from .progress import Progress


class PreflightError(ValueError):
    """The stage cannot train on this layout and model; one problem per line, naming the field."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))


BAD_INPUT = (ConfigError, E.EnvContractError, LayoutError, WeightsError, URIError, StorageError,
             CheckpointNotFoundError, FileNotFoundError, PreflightError, MissingWeightsError,
             MetaError, DataError, RecordError)  # fmt: skip


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="longvila-train", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="trainer config YAML (default: $LONGVILA_CONFIG under the env contract)")
    p.add_argument("--preset", help="base preset (default: the env contract's stage type; none when direct)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, repeatable")
    p.add_argument(
        "--cache-dir",
        # $TMPDIR keeps pods that share one machine (the local runner) out of each other's cache
        default=os.environ.get("LONGVILA_CACHE_DIR", str(Path(tempfile.gettempdir()) / "longvila-cache")),
        help="generated and fetched data (default: $LONGVILA_CACHE_DIR, else $TMPDIR/longvila-cache)",
    )
    return p.parse_args(argv)


@dataclass(frozen=True)
class Plan:
    """What this run does, checked before any process group exists."""

    cfg: TrainerConfig
    layout: ParallelLayout
    kind: Kind  # token layout over the SP group
    uri: str  # this stage's checkpoints
    init: str  # weights to start from ("" = the model's own)
    init_meta: ModelMeta | None = None  # the model the init checkpoint holds (RoPE base, token order …)
    rope_inherited: bool = False  # the RoPE base is the init checkpoint's (the stage sets none)


def plan(args: argparse.Namespace, environ: Mapping[str, str]) -> Plan:
    """The env contract when present (torchrun in a pod), else a direct one-process run."""
    env = E.parse(environ) if E.STAGE_TYPE in environ else None
    path = args.config or (env.config_path if env else None)
    # Under the operator the config file is complete (its preset already merged in), so no
    # preset goes underneath unless --preset asks for one.
    cfg = load_config(path, args.set, preset=args.preset)
    if env is None:
        out = Plan(cfg, ParallelLayout(1), "zigzag", cfg.checkpoint.uri, cfg.model.init)
    else:
        cfg = with_stage(cfg, env.stage, env.stage_type)
        layout = env.layout()
        kind: Kind = "zigzag" if env.token_layout == "zigzag" else "contiguous"
        out = Plan(cfg, layout, kind, env.checkpoint_uri, env.init_checkpoint or cfg.model.init)
        world = environ.get("WORLD_SIZE", str(layout.world))
        if world != str(layout.world):
            raise E.EnvContractError([f"WORLD_SIZE={world}: the contract says {layout.world}"])
    if not out.uri:
        raise ConfigError("checkpoint.uri: required when run directly (torchrun: LONGVILA_CHECKPOINT_URI)")
    if out.init:  # the manifest only: the base the weights were trained with, before the preflight
        meta = read_meta(out.init, "model.init", Path(args.cache_dir) / "staging")
        inherited = meta is not None and out.cfg.train.rope_theta is None
        out = dataclasses.replace(out, cfg=inherit(out.cfg, meta), init_meta=meta, rope_inherited=inherited)
    check_stage(out, env is not None)
    return out


def check_stage(job: Plan, under_contract: bool) -> None:
    """The preflight `longvila check` runs on the whole job, here for this stage, before any
    weights are loaded: the layout against the model's heads, frames and RoPE against the
    context. Reads only the config.json files of the model (or the tiny preset's shapes)."""
    cfg = job.cfg
    if cfg.model.preset:
        if cfg.model.preset not in PRESETS:
            raise ConfigError(f"model.preset: {cfg.model.preset!r} is not one of {', '.join(PRESETS)}")
        llm, vision = PRESETS[cfg.model.preset].llm, PRESETS[cfg.model.preset].vision
    else:
        llm, vision = (
            model_config("model.llm", cfg.model.llm),
            model_config("model.vision_tower", cfg.model.vision_tower),
        )
    try:
        facts = ModelFacts.from_configs(llm, vision)
    except ModelConfigError as err:
        raise WeightsError(str(err)) from None
    if job.init_meta is not None:
        check_shapes(job.init_meta, llm, "model.init")
    fields = Fields(context="train.context_length", rope="train.rope_theta", frames="train.frames")
    stage = StageInput(cfg.stage.name or "run", cfg.stage.type or "-", cfg.train, fields)
    result = preflight(job.layout, facts, [stage], E.ULYSSES if under_contract else "ulysses")
    if result.problems:
        raise PreflightError(result.problems)


def training_state(engine: Engine, loader: PackedLoader, step: int, packs: int, total: int) -> dict[str, Any]:
    """What a checkpoint holds: model + optimizer by name (DTensors under FSDP, full tensors
    under ZeRO), loader position, progress.

    `packs_per_step` (and `max_steps` when derived from the data) are fixed at the stage's
    first start and kept by every resume, so a smaller world trains the same global batch on
    the same LR schedule.
    """
    progress = {"step": step, "packs_per_step": packs, "max_steps": total}
    model_sd, optim_sd = engine.model_state(), engine.optimizer_state()
    return {"model": model_sd, "optimizer": optim_sd, "loader": loader.state_dict(), "progress": progress}


def merged_state(
    engine: Engine, loader: PackedLoader, step: int, packs: int, total: int, scale: float
) -> dict[str, Any]:
    """A LoRA stage's final checkpoint: the weights with B A merged in, under the plain model's
    names (what the next stage, without LoRA, loads), and no optimizer state: the stage is done.

    It is the only checkpoint of the last step, committed by its manifest like any other, so a
    crash leaves either the previous adapter checkpoint as the newest (resume retrains the
    last steps) or this one (resume only writes final.json).
    """
    progress = {"step": step, "packs_per_step": packs, "max_steps": total}
    model_sd = merge_lora_state(engine.model_state(), scale)
    return {"model": model_sd, "loader": loader.state_dict(), "progress": progress}


def checkpoint_meta(cfg: TrainerConfig, model: ModelMeta) -> dict[str, Any]:
    """Manifest meta of an ordinary checkpoint: the model it holds; with LoRA, what load_weights
    needs to merge it."""
    lora = cfg.train.lora
    if not lora.enabled:
        return {"stage": cfg.stage.name, **checkpoint_meta_entry(model)}
    return {
        "stage": cfg.stage.name,
        "lora": {"rank": lora.rank, "alpha": lora.alpha, "targets": list(lora.targets)},
        **checkpoint_meta_entry(model),
    }


def start_state(
    job: Plan,
    engine: Engine,
    loader: PackedLoader,
    store: CheckpointStore,
    resume: int | None,
    first: dict[str, int],
    cache: Path,
    rank: int,
) -> tuple[dict[str, int], int | None]:
    """Where this run starts, as (progress, ended): resume from this stage's newest complete
    checkpoint, else start from the init checkpoint's weights (the previous stage's), else
    from the model's own. `ended` is the step a LoRA stage already finished at (its merged
    final checkpoint committed, final.json not yet written), None otherwise.

    Only a resume reads optimizer state: asking for it earlier would make torch initialise
    AdamW with a zero-gradient step, and the first real update would run as Adam step 2.
    """
    t = job.cfg.train
    if resume is not None and store.manifest(resume).meta.get("weights") == MERGED:
        if t.max_steps not in (None, resume):
            raise ConfigError(
                f"train.max_steps={t.max_steps}: this LoRA stage already ended at step {resume} "
                "with merged weights; it cannot train further"
            )
        say(rank, f"step {resume} of {job.uri} holds the stage's merged final weights; nothing to train")
        return {**first, "step": resume, "max_steps": resume}, resume
    if resume is not None:
        state = training_state(engine, loader, 0, first["packs_per_step"], first["max_steps"])
        loaded = store.load(state)
        engine.load(state["model"], state["optimizer"])
        loader.load_state_dict(state["loader"])
        if loaded.rank_state is not None:
            torch.set_rng_state(loaded.rank_state["rng"])
        where = f"{job.uri} (written by {loaded.manifest.world_size} ranks)"
        say(rank, f"resumed from step {loaded.step} of {where}")
        return dict(state["progress"]), None
    if job.init:  # the previous stage's committed weights; optimizer and data start fresh
        own = engine.model_state()
        names = plain_names(own)  # under LoRA the checkpoint's `P.weight` fills `P.base.weight`
        weights = {"model": {plain: own[mine] for plain, mine in names.items()}}
        loaded = CheckpointStore.from_uri(job.init, staging=cache / "staging").load(weights, step="final")
        engine.load({**own, **{mine: weights["model"][plain] for plain, mine in names.items()}}, None)
        say(rank, f"initialised weights from step {loaded.step} of {job.init}")
    return first, None


def run(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    job = plan(args, environ)
    metrics = Progress().serve(environ)  # up before the process group: a stuck start shows as step 0
    try:
        return train(args, environ, job, metrics)
    finally:
        metrics.close()


def train(args: argparse.Namespace, environ: Mapping[str, str], job: Plan, metrics: Progress) -> int:
    cfg, layout, t = job.cfg, job.layout, job.cfg.train
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    else:
        torch.use_deterministic_algorithms(True)  # same seed → same losses, bit for bit
    if layout.world > 1:
        init_distributed("nccl" if cuda else "gloo", environ, timedelta(seconds=t.collective_timeout_s),
                         device if cuda else None)  # fmt: skip
    groups = build_groups(layout, device=device)
    rank = groups.rank
    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    host = groups.host.world  # checkpoints coordinate over gloo: object collectives, no GPU sync
    store = CheckpointStore.from_uri(
        job.uri, staging=cache / "staging", keep=cfg.checkpoint.keep, layout=layout,
        group=None if host is None else host.pg,
    )  # fmt: skip
    resume = store.latest_complete()  # also the first S3 call: an unreachable endpoint fails here
    codec = load_tokenizer(cfg.model.tokenizer or cfg.model.llm, lambda uri: local_copy(uri, cache))
    if job.init_meta is not None:
        check_media(job.init_meta, codec.media_token_id, "model.init")
    model = model_for_run(cfg, groups, codec.media_token_id, cache, job.init_meta)
    meta = meta_of(model)  # in every checkpoint: what the next stage and the eval build
    say(
        rank,
        f"RoPE base {meta.rope_theta:g}" + (f" (inherited from {job.init})" if job.rope_inherited else ""),
    )
    engine = make_engine(model, t, groups, bf16=cuda)

    # media (s3:// objects, tar members) fetched per sample into a cache the node's ranks share
    reader = MediaReader(MediaCache(cache / "media", cfg.data.cache_mib << 20))
    samples = open_stage_data(cfg, codec, cache / "data", reader)
    say(rank, describe_data(cfg, samples))
    size = int(model.vision.model.config.image_size)  # type: ignore[arg-type]
    tpf = tokens_per_frame(size, model.vision.patch_size)
    warn = (
        (lambda m: print(f"longvila-train: warning: {m}", file=sys.stderr, flush=True))
        if groups.sp_rank == 0
        else None
    )
    loader = build_loader(cfg, samples, tokens_per_frame=tpf, image_size=size, dp_rank=groups.dp_rank,
                          dp_size=layout.dp, reader=reader, warn=warn)  # fmt: skip

    total = t.max_steps or t.epochs * loader.rounds_in_epoch() // t.grad_accum  # passes over the data
    first = {"step": 0, "packs_per_step": t.grad_accum * layout.dp, "max_steps": total}
    progress, ended = start_state(job, engine, loader, store, resume, first, cache, rank)
    step, packs = int(progress["step"]), int(progress["packs_per_step"])
    total = t.max_steps or int(progress["max_steps"])  # a derived length is kept from the first start
    accum = loop.accumulation(packs, layout.dp)  # dp shrank after a lost node: more micro-steps
    metrics.started(step, total, resume or 0)

    while step < total:
        t0, lr = time.perf_counter(), loop.lr_at(step, t, total)
        stats = engine.step(loader, kind=job.kind, accum=accum, lr=lr, tokens_per_frame=tpf)
        step += 1
        memory = loop.max_over_ranks(loop.memory_mib(device), groups)
        skipped, attempted = skip_counts(loader, layout.sp, groups.host.world)
        if problem := skip_problem(skipped, attempted, cfg.data.max_skipped_fraction, loader.last_failure):
            raise DataError(problem)
        record = loop.step_record(step, total, stats, time.perf_counter() - t0, memory, world=layout.world,
                                  skipped_samples=skipped)  # fmt: skip
        if rank == 0:
            print(json.dumps(record), flush=True)
            print(loop.progress_line(record), file=sys.stderr, flush=True)
            metrics.stepped(record)
        if step == total and t.lora.enabled:
            break  # the last step's checkpoint holds the merged weights (below)
        if step % cfg.checkpoint.every_steps == 0 or step == total:
            state = training_state(engine, loader, step, packs, total)
            store.save(
                step, state, rank_state={"rng": torch.get_rng_state()}, meta=checkpoint_meta(cfg, meta)
            )
            metrics.checkpointed(step)
    if t.lora.enabled and ended is None:
        merged = merged_state(engine, loader, total, packs, total, t.lora.alpha / t.lora.rank)
        store.save(
            total, merged, meta={"stage": cfg.stage.name, "weights": MERGED, **checkpoint_meta_entry(meta)}
        )
        metrics.checkpointed(total)
        say(rank, f"step {total}: LoRA adapters merged into the final weights")
    if rank == 0:
        store.mark_final(total)
    if layout.world > 1:
        dist.destroy_process_group()
    return 0


def init_distributed(
    backend: str, environ: Mapping[str, str], timeout: timedelta, device: torch.device | None = None
) -> None:
    """The default group over torchrun's store, under a prefix per restart attempt.

    torchrun's c10d rendezvous keeps one store across restarts; without the prefix a
    restarted rank can read a dead rank's address left by the previous attempt and gloo's
    connectFullMesh fails ("Connection refused"). `timeout` (train.collective_timeout_s) is
    how long a collective waits for a peer before the rank fails; the operator's hang
    check (failurePolicy.hangTimeoutSeconds) is meant to fire first (docs/failures.md). On
    GPU the group is bound to the rank's device (`device_id`): NCCL initialises eagerly and
    never guesses a device.
    """
    rank, world = int(environ["RANK"]), int(environ["WORLD_SIZE"])
    agent = environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # the agent hosts it
    store = TCPStore(environ["MASTER_ADDR"], int(environ["MASTER_PORT"]), world,
                          is_master=rank == 0 and not agent, timeout=timeout, multi_tenant=True)  # fmt: skip
    prefixed = PrefixStore(f"longvila/attempt-{environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
    dist.init_process_group(backend, store=prefixed, rank=rank, world_size=world, timeout=timeout,
                            device_id=device)  # fmt: skip


def say(rank: int, text: str) -> None:
    if rank == 0:
        print(f"longvila-train: {text}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    log = os.environ.get(E.TERMINATION_LOG_VAR, "")
    try:
        return run(args, os.environ)
    except BAD_INPUT as e:
        transient = isinstance(e, StorageError) and e.transient
        kind = exits.UNAVAILABLE if transient else exits.ERROR
        print(exits.line(kind, str(e)), file=sys.stderr, flush=True)
        if log:
            exits.write(log, kind, str(e))
        return exits.EXIT_UNAVAILABLE if transient else exits.EXIT_BAD_INPUT
    except Exception as e:  # the traceback still goes to the log; the message names the cause
        if log:
            exits.write(log, exits.CRASHED, f"{type(e).__name__}: {e}")
        raise


if __name__ == "__main__":
    sys.exit(main())
