"""The training loop shared by the teacher, maximum-likelihood students and distillation.

One loop, top to bottom: a loss module turns a batch into named losses; their weighted sum is
checked for NaN/inf, back-propagated, clipped and stepped; EMA weights follow; logs, validation
and checkpoints happen at intervals. Runs on CPU or CUDA, alone or under `torchrun` (DDP).

Under DDP every rank starts from rank 0's weights (DDP's broadcast; ActNorm initialises from
all ranks' first batches), reads its own crops (a function of seed, step and rank) and draws
its own noise (`rank_seed`); checkpoints hold every rank's RNG state, so a resumed run
continues bit-identically on each rank.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter

from wavflow.audio import check_features_match
from wavflow.checkpoint import checkpoint_state, load_checkpoint, save_checkpoint
from wavflow.config import (
    Recipe,
    RecipeError,
    TrainConfig,
    differing_key,
    dumps_toml,
    recipe_from_dict,
    to_dict,
)
from wavflow.data import PreparedData, SegmentDataset, StepBatchSampler
from wavflow.distributed import (
    init_distributed,
    on_any_rank,
    pick_device,
    rank_seed,
    rng_states,
    set_rng_states,
)
from wavflow.objectives import Objective
from wavflow.progress import progress_bar


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. too many NaN losses in a row); checkpoints are kept."""


@dataclass
class RunState:
    """What changes as training goes: restored exactly on resume."""

    step: int = 0
    best_val: float = math.inf
    bad_steps: int = 0
    skipped_steps: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to `lr`, then cosine decay to `lr * min_lr_ratio` at `steps`."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class EMA:
    """Polyak averages of a model's parameters (buffers copied): e = d e + (1 - d) p.

    The decay ramps up as min(decay, (1 + n) / (10 + n)) so early averages are not stale.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.updates = 0

    @torch.no_grad()
    def load(self, state: dict[str, Tensor], updates: int) -> None:
        """Saved averages copied into place (strict keys): they stay on the model's device and
        in its dtypes wherever the checkpoint was loaded."""
        if state.keys() != self.state.keys():
            raise TrainingError("the checkpoint's EMA weights do not fit the model")
        for key, value in state.items():
            self.state[key].copy_(value)
        self.updates = updates

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for key, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                self.state[key].lerp_(value.detach(), 1 - decay)
            else:
                self.state[key].copy_(value)

    def swap_into(self, model: nn.Module) -> dict[str, Tensor]:
        """Load the averages into `model`; returns its own weights to restore afterwards."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.state)
        return own


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest `ckpt_<step>.pt` in `run_dir`, or None."""
    found = sorted(run_dir.glob("ckpt_*.pt"))
    return found[-1] if found else None


def train(
    objective: Objective,
    recipe: Recipe,
    data: PreparedData | str | Path,
    run_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
) -> RunState:
    """Train `objective` on the prepared data; checkpoints, logs and TensorBoard go to `run_dir`.

    Args:
        objective: what to train (`objectives.build_objective`).
        recipe: the resolved recipe; `[train]` drives the loop.
        data: the prepared dataset, opened (as `build_objective` had it) or its folder.
        run_dir: the run folder: checkpoints, `metrics.jsonl`, TensorBoard, `recipe.toml`.
        resume: continue from the newest checkpoint in `run_dir`.
        progress: report progress (a bar on a terminal, lines in a log; rank 0 only).

    Returns:
        The final `RunState` (step, best validation metric, skipped steps, metric history).

    Raises:
        TrainingError: after `train.max_bad_steps` non-finite losses in a row.
    """
    cfg = recipe.train
    rank, world, local_rank = init_distributed(cfg.device)
    device = pick_device(cfg.device, local_rank)
    run_dir = Path(run_dir)
    is_main = rank == 0
    prepared = _open_data(data, recipe)

    model, loss_module = objective.model.to(device), objective.loss.to(device)
    loss_module.train()
    trained = [model] if objective.critic is None else [model, objective.critic]
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in module.parameters() if p.requires_grad]} for module in trained],
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
    )
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    state, saved_rng = RunState(), None
    if resume and (found := latest_checkpoint(run_dir)) is not None:
        state, saved_rng = _restore(found, recipe, objective, optimizer, ema, device)
    elif is_main:
        _start_run_dir(run_dir, recipe)

    ddp_loss = (
        nn.parallel.DistributedDataParallel(
            loss_module, device_ids=[device] if device.type == "cuda" else None
        )
        if world > 1
        else loss_module
    )
    train_set = SegmentDataset(prepared, "train", recipe.data.segment_length, True, cfg.seed)
    val_batches = _validation_batches(prepared, recipe, cfg)
    loader = DataLoader(
        train_set,
        batch_sampler=StepBatchSampler(len(train_set), cfg.batch_size, cfg.seed, state.step, rank),
        num_workers=recipe.data.num_workers,
        persistent_workers=False,
        # Its own generator: starting an iterator draws a seed, which from the global RNG would
        # shift a resumed run's noise by one draw.
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    writer = SummaryWriter(str(run_dir / "tensorboard")) if is_main else None
    log = _Logger(run_dir, writer, is_main)
    bar = progress_bar(
        total=cfg.steps,
        desc=objective.kind,
        unit="step",
        initial=state.step,
        disable=not (progress and is_main),
    )
    started, window, window_start = time.monotonic(), [], time.monotonic()
    # Training draws start here, after the set-up's own (the validation loader's seed).
    if saved_rng is None:
        torch.manual_seed(rank_seed(cfg.seed, rank))
    else:
        set_rng_states(saved_rng, device, rank, cfg.seed)

    for batch in loader:
        if state.step >= cfg.steps:
            break
        batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        lr = learning_rate(state.step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            losses = ddp_loss(batch)
        total = sum(objective.weights.get(k, 0.0) * v for k, v in losses.items())
        grad_norm = _backward_and_step(total, trained, optimizer, cfg, world)
        state.step += 1
        if grad_norm is None:
            state.bad_steps += 1
            state.skipped_steps += 1
            log.event(state.step, {"train/skipped_steps": state.skipped_steps})
            if state.bad_steps >= cfg.max_bad_steps:
                raise TrainingError(
                    f"{state.bad_steps} non-finite losses in a row at step {state.step}; stopped. "
                    f"The last good checkpoint is kept in {run_dir}. "
                    "Lower train.lr or check the data."
                )
            continue
        state.bad_steps = 0
        if ema is not None:
            ema.update(model)
        window.append({k: float(v.detach()) for k, v in losses.items()} | {"grad_norm": grad_norm})
        out_of_time = on_any_rank(
            cfg.max_seconds > 0 and time.monotonic() - started > cfg.max_seconds, device, world
        )
        last = state.step >= cfg.steps or out_of_time
        if state.step % cfg.log_every == 0 or last:
            rate = len(window) * cfg.batch_size * world * recipe.data.segment_length
            rate /= max(time.monotonic() - window_start, 1e-9)
            scalars = _mean_dict(window) | {"lr": lr, "samples_per_s": rate}
            log.event(state.step, {f"train/{k}": v for k, v in scalars.items()})
            bar.set_postfix(loss=f"{scalars.get(next(iter(objective.weights)), float('nan')):.3f}")
            window, window_start = [], time.monotonic()
        bar.update()  # after the postfix, so a log's line shows this step's loss
        evaluate = state.step % cfg.eval_every == 0 or last
        checkpoint = state.step % cfg.checkpoint_every == 0 or last
        # Every rank takes part in gathering the RNG states; only rank 0 writes.
        rng = rng_states(device, world) if evaluate or checkpoint else {}
        if is_main and evaluate:
            metrics = _evaluate(objective, ema, val_batches, writer, state.step)
            log.event(state.step, metrics)
            state.history.append({"step": state.step, **metrics})
            value = metrics.get(objective.best_metric, math.inf)
            if value < state.best_val:
                state.best_val = value
                best = run_dir / "best.pt"
                _save(best, objective, recipe, prepared.speakers, optimizer, ema, state, rng)
        if is_main and checkpoint:
            path = run_dir / f"ckpt_{state.step:08d}.pt"
            _save(path, objective, recipe, prepared.speakers, optimizer, ema, state, rng)
            _prune(run_dir, cfg.keep_last)
        if out_of_time:
            break
    bar.close()
    log.close()
    return state


def _backward_and_step(
    total: Tensor,
    modules: list[nn.Module],
    optimizer: torch.optim.Optimizer,
    cfg: TrainConfig,
    world: int,
) -> float | None:
    """Backward, clip and step; returns the first module's (the model's) gradient norm, or None
    when the step was skipped.

    Each module is clipped on its own, so a critic's gradients never shrink the model's. A
    non-finite loss or gradient on ANY rank skips the step on all ranks, so DDP stays in step.
    """
    optimizer.zero_grad(set_to_none=True)
    finite = torch.tensor(float(torch.isfinite(total.detach()).all()), device=total.device)
    if world > 1:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    if finite.item() < 1:
        return None
    total.backward()
    norms = [
        torch.nn.utils.clip_grad_norm_(
            [p for p in module.parameters() if p.grad is not None], cfg.grad_clip
        )
        for module in modules
    ]
    ok = torch.isfinite(torch.stack(norms)).all().float()
    if world > 1:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    if ok.item() < 1:
        optimizer.zero_grad(set_to_none=True)
        return None
    optimizer.step()
    return float(norms[0])


def _open_data(data: PreparedData | str | Path, recipe: Recipe) -> PreparedData:
    """The prepared dataset (opened here only when given as a folder), checked against the
    recipe: the same feature settings, and F0 when the models are conditioned on pitch."""
    if not isinstance(data, PreparedData):
        data = PreparedData(data)
    check_features_match(recipe.features, data.features, str(data.root))
    if recipe.conditioning.harmonics:
        data.require_f0()
    return data


def _validation_batches(prepared: PreparedData, recipe: Recipe, cfg: TrainConfig) -> list[dict]:
    """Fixed validation crops, batched once and reused at every evaluation."""
    val_set = SegmentDataset(prepared, "val", recipe.data.segment_length, random_crops=False)
    loader = DataLoader(val_set, batch_size=cfg.batch_size, shuffle=False)
    return [batch for _, batch in zip(range(cfg.val_batches), loader)]


@torch.no_grad()
def _evaluate(
    objective: Objective,
    ema: EMA | None,
    batches: list[dict],
    writer: SummaryWriter | None,
    step: int,
) -> dict[str, float]:
    """Validation metrics of the EMA weights (when kept), plus media for TensorBoard.

    Its random draws (a student's samples) come from a forked RNG, so how often a run validates
    does not change its training draws.
    """
    model = objective.model
    device = next(model.parameters()).device
    batches = [
        {k: v.to(device) if isinstance(v, Tensor) else v for k, v in b.items()} for b in batches
    ]
    own = ema.swap_into(model) if ema is not None else None
    was_training = model.training
    model.eval()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices):
            metrics = {
                f"val/{k}" if not k.startswith("val/") else k: v
                for k, v in objective.validate(model, batches).items()
            }
            if writer is not None and objective.media is not None and batches:
                objective.media(model, batches[0], writer, step)
    finally:
        model.train(was_training)
        if own is not None:
            model.load_state_dict(own)
    return metrics


def _save(
    path: Path,
    objective: Objective,
    recipe: Recipe,
    speakers: list[str],
    optimizer: torch.optim.Optimizer,
    ema: EMA | None,
    state: RunState,
    rng: dict[str, list[Tensor]],
) -> None:
    """Write a checkpoint; `rng` holds every rank's RNG states (`rng_states`)."""
    save_checkpoint(
        path,
        checkpoint_state(
            objective.kind,
            recipe,
            objective.model,
            speakers,
            ema=ema.state if ema is not None else None,
            ema_updates=ema.updates if ema is not None else 0,
            optimizer=optimizer.state_dict(),
            step=state.step,
            best_val=state.best_val,
            bad_steps=state.bad_steps,
            skipped_steps=state.skipped_steps,
            rng=rng,
            metadata=objective.metadata,
            critic=objective.critic.state_dict() if objective.critic is not None else None,
        ),
    )


# The sections that make the model what it is: a resumed run must keep them.
RESUME_SECTIONS = ("features", "conditioning", "teacher", "student")


def _restore(
    path: Path,
    recipe: Recipe,
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    ema: EMA | None,
    device: torch.device,
) -> tuple[RunState, dict[str, Any]]:
    """Load what a checkpoint holds so the run continues exactly on `device`.

    The checkpoint is mapped to `device`; the model, optimizer (`load_state_dict` follows each
    parameter's device) and EMA (`EMA.load`) copy it into their own tensors, so a run saved on
    one device resumes on another.

    Returns:
        The run state, and every rank's saved RNG states (for `set_rng_states`).

    Raises:
        RecipeError: the model sections (`RESUME_SECTIONS`) differ from the checkpoint's,
            naming the first differing key.
    """
    saved = load_checkpoint(path, map_location=device)
    old = recipe_from_dict(saved["config"])
    for section in RESUME_SECTIONS:
        key = differing_key(getattr(old, section), getattr(recipe, section))
        if key is not None:
            was, given = getattr(getattr(old, section), key), getattr(getattr(recipe, section), key)
            raise RecipeError(
                f"cannot resume from {path}: {section}.{key} is {was!r} in the run but "
                f"{given!r} in the recipe given; resume with the run's own recipe.toml (only "
                "[train] may change), or start a new run with --out"
            )
    objective.model.load_state_dict(saved["model"])
    if (objective.critic is None) != (saved.get("critic") is None):
        raise RecipeError(
            f"cannot resume from {path}: the run and the recipe given differ in whether "
            "discriminators train (distill.weights 'discriminator'); resume with the run's own "
            "recipe.toml, or start a new run with --out"
        )
    if objective.critic is not None:
        objective.critic.load_state_dict(saved["critic"])
    optimizer.load_state_dict(saved["optimizer"])
    if ema is not None and saved.get("ema"):
        ema.load(saved["ema"], int(saved.get("ema_updates", 0)))
    state = RunState(
        step=int(saved["step"]),
        best_val=float(saved["best_val"]),
        bad_steps=int(saved["bad_steps"]),
        skipped_steps=int(saved.get("skipped_steps", 0)),
    )
    return state, saved["rng"]


def _start_run_dir(run_dir: Path, recipe: Recipe) -> None:
    """A new run: refuse to overwrite another run's checkpoints; keep the resolved recipe."""
    if latest_checkpoint(run_dir) is not None:
        raise TrainingError(
            f"{run_dir} already holds checkpoints: pass --resume to continue, or pick a new --out"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "recipe.toml").write_text(dumps_toml(to_dict(recipe)))


def _prune(run_dir: Path, keep_last: int) -> None:
    for old in sorted(run_dir.glob("ckpt_*.pt"))[:-keep_last]:
        old.unlink()


def _mean_dict(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = rows[0].keys() if rows else []
    return {k: sum(r[k] for r in rows) / len(rows) for k in keys}


class _Logger:
    """metrics.jsonl (one line per event) and TensorBoard scalars, written by rank 0 only."""

    def __init__(self, run_dir: Path, writer: SummaryWriter | None, enabled: bool) -> None:
        self.path, self.writer, self.enabled = run_dir / "metrics.jsonl", writer, enabled

    def event(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as file:
            file.write(json.dumps({"step": step, **scalars}) + "\n")
        if self.writer is not None:
            for key, value in scalars.items():
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
