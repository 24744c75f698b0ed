"""DDP on two CPU processes (gloo): ranks stay identical, draw their own noise, resume exactly.

Each test spawns two processes once and runs several short trainings in them (the process
group is joined once), so that the cost of starting torch is paid once per test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from factories import STUDENT_SIZES
from torch import Tensor, nn

from wavflow.checkpoint import build_student, build_teacher, load_checkpoint
from wavflow.config import Recipe, load_recipe
from wavflow.distributed import rank_seed, set_rng_states
from wavflow.objectives import Objective, distillation_objective, likelihood_objective
from wavflow.training import train

TINY = Path(__file__).resolve().parents[1] / "recipes" / "tiny_teacher.toml"
RUNS = [  # (model, objective): the teacher, every student by maximum likelihood where it can be
    ("teacher", "mle"),
    ("waveglow", "mle"),
    ("flowavenet", "mle"),
    ("squeezewave", "mle"),
    ("iaf", "distill"),
    ("waveglow", "distill"),
    ("flowavenet", "distill"),
    ("squeezewave", "distill"),
    ("squeezewave", "adversarial"),  # discriminators train beside it
]
# The recipe of the "adversarial" runs: spectral and GAN terms, narrow discriminators.
ADVERSARIAL = (
    "distill.weights={stft=1.0,adversarial=1.0,feature_matching=1.0,discriminator=1.0}",
    "distill.discriminator_periods=[2]",
    "distill.discriminator_scales=[1]",
    "distill.discriminator_channels=4",
    "distill.discriminator_max_channels=8",
)


class _RecordingLoss(nn.Module):
    """The objective's loss, keeping the RNG state at each call: what the noise is drawn from."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.rng = inner, []

    def forward(self, batch: dict) -> dict[str, Tensor]:
        state = torch.get_rng_state()
        if batch["audio"].is_cuda:  # the noise is drawn on the GPU
            state = torch.cat([state, torch.cuda.get_rng_state(batch["audio"].device)])
        self.rng.append(state)
        return self.inner(batch)


def _recipe(
    kind: str, steps: int, extra: tuple[str, ...] = (), device: str = "cpu", objective: str = ""
) -> Recipe:
    student = [f'student.kind="{kind}"', *STUDENT_SIZES[kind]] if kind != "teacher" else []
    extra = (*extra, *ADVERSARIAL) if objective == "adversarial" else extra
    return load_recipe(
        TINY,
        [
            *student,
            f"train.steps={steps}",
            "train.eval_every=1000",
            "train.val_batches=1",
            f'train.device="{device}"',
            *extra,
        ],
    )


def _objective(kind: str, objective: str, recipe: Recipe) -> Objective:
    """A fresh objective without TensorBoard media (the same weights on every rank)."""
    torch.manual_seed(recipe.train.seed)
    if kind == "teacher":
        built = likelihood_objective("teacher", build_teacher(recipe), recipe.features)
        return dataclasses.replace(built, loss=_RecordingLoss(built.loss), media=None)
    student = build_student(recipe)
    if objective == "mle":
        built = likelihood_objective("student", student, recipe.features)
    else:
        built = distillation_objective(student, build_teacher(recipe), recipe)
    return dataclasses.replace(built, loss=_RecordingLoss(built.loss), media=None)


def _join(rank: int, world: int, port: int, backend: str = "gloo") -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    if backend == "nccl":
        torch.cuda.set_device(rank)
    torch.distributed.init_process_group(backend)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _trained_state(objective: Objective) -> dict[str, Tensor]:
    """The weights and buffers a run trains: its model's, and its critic's where it has one."""
    state = {k: v.cpu() for k, v in objective.model.state_dict().items()}
    if objective.critic is not None:
        state |= {f"critic.{k}": v.cpu() for k, v in objective.critic.state_dict().items()}
    return state


def every_model_worker(
    rank: int, world: int, port: int, data: str, out: str, backend: str = "gloo"
) -> None:
    """Two steps of every run of RUNS in this rank; saves its weights and noise RNG states."""
    _join(rank, world, port, backend)
    device = "auto" if backend == "nccl" else "cpu"  # auto: this rank's own GPU
    for kind, name in RUNS:
        recipe = _recipe(kind, steps=2, device=device, objective=name)
        objective = _objective(kind, name, recipe)
        if rank > 0:  # other initial weights: DDP must broadcast rank 0's
            with torch.no_grad():
                trained = [objective.model, objective.critic or torch.nn.Identity()]
                for parameter in (p for module in trained for p in module.parameters()):
                    parameter.add_(0.1)
        train(objective, recipe, data, Path(out) / f"{kind}_{name}", progress=False)
        state = _trained_state(objective)
        torch.save(
            {"state": state, "rng": objective.loss.rng}, Path(out) / f"{kind}_{name}_{rank}.pt"
        )
    torch.distributed.destroy_process_group()


def check_ranks_agree(out: Path, world: int) -> None:
    """Every rank of every run holds rank 0's weights and buffers after its steps, which moved
    them, and no two ranks drew from the same RNG state."""
    for kind, name in RUNS:
        ranks = [torch.load(out / f"{kind}_{name}_{r}.pt") for r in range(world)]
        first = ranks[0]["state"]
        for other in ranks[1:]:
            assert first.keys() == other["state"].keys()
            for key in first:  # parameters and buffers (ActNorm's flag included)
                assert torch.equal(first[key], other["state"][key]), (kind, name, key)
            for step, (a, b) in enumerate(zip(ranks[0]["rng"], other["rng"])):
                assert not torch.equal(a, b), f"{kind} {name}: one RNG state for two ranks, {step}"
        initial = _trained_state(_objective(kind, name, _recipe(kind, 2, objective=name)))
        assert first.keys() == initial.keys(), (kind, name)
        moved = {k.startswith("critic.") for k in first if not torch.equal(first[k], initial[k])}
        assert moved == ({False, True} if name == "adversarial" else {False}), (kind, name)


@pytest.mark.slow
def test_every_model_stays_identical_on_both_ranks_and_draws_its_own_noise(prepared_dir, tmp_path):
    mp.spawn(every_model_worker, args=(2, free_port(), str(prepared_dir), str(tmp_path)), nprocs=2)
    check_ranks_agree(tmp_path, world=2)


class _CrashError(Exception):
    """Stands in for a killed process."""


class _CrashingLoss(nn.Module):
    def __init__(self, inner: nn.Module, at_call: int) -> None:
        super().__init__()
        self.inner, self.at_call, self.calls = inner, at_call, 0

    def forward(self, batch: dict) -> dict[str, Tensor]:
        self.calls += 1
        if self.calls == self.at_call:
            raise _CrashError
        return self.inner(batch)


def _resume_worker(rank: int, world: int, port: int, data: str, out: str) -> None:
    _join(rank, world, port)
    checkpoints = ("train.checkpoint_every=2", "train.keep_last=10")
    recipe = _recipe("flowavenet", steps=4, extra=checkpoints)
    whole = _objective("flowavenet", "distill", recipe)
    train(whole, recipe, data, Path(out) / "whole", progress=False)
    crashing = _objective("flowavenet", "distill", recipe)
    crashing = dataclasses.replace(crashing, loss=_CrashingLoss(crashing.loss, at_call=4))
    with contextlib.suppress(_CrashError):  # both ranks fail in step 4, after step 2's checkpoint
        train(crashing, recipe, data, Path(out) / "killed", progress=False)
    resumed = _objective("flowavenet", "distill", recipe)
    train(resumed, recipe, data, Path(out) / "killed", resume=True, progress=False)
    torch.save(resumed.model.state_dict(), Path(out) / f"resumed_rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_a_killed_two_process_run_resumes_bit_identically_on_both_ranks(prepared_dir, tmp_path):
    mp.spawn(_resume_worker, args=(2, free_port(), str(prepared_dir), str(tmp_path)), nprocs=2)
    whole = load_checkpoint(tmp_path / "whole" / "ckpt_00000004.pt")
    resumed = load_checkpoint(tmp_path / "killed" / "ckpt_00000004.pt")
    for part in ("model", "ema"):
        for key in whole[part]:
            assert torch.equal(whole[part][key], resumed[part][key]), (part, key)
    assert len(whole["rng"]["torch"]) == 2
    for rank in (0, 1):  # each rank's own stream, where the uninterrupted run left it
        assert torch.equal(whole["rng"]["torch"][rank], resumed["rng"]["torch"][rank]), rank
    assert not torch.equal(whole["rng"]["torch"][0], whole["rng"]["torch"][1])
    rank1 = torch.load(tmp_path / "resumed_rank1.pt")
    for key in rank1:
        assert torch.equal(rank1[key], resumed["model"][key]), key


def test_rank_seeds_differ_from_each_other_and_from_the_seed():
    seeds = {rank_seed(seed, rank) for seed in (0, 1) for rank in range(4)}
    assert len(seeds) == 8 and not seeds & set(range(4))
    assert rank_seed(3, 1) == rank_seed(3, 1)


def test_rng_states_of_older_checkpoints_and_of_new_ranks():
    cpu = torch.device("cpu")
    torch.manual_seed(5)
    state, expected = torch.get_rng_state(), torch.rand(3)
    set_rng_states({"torch": state}, cpu, rank=0, seed=0)  # saved before per-rank states
    assert torch.equal(torch.rand(3), expected)
    set_rng_states({"torch": [state]}, cpu, rank=1, seed=7)  # a rank the run did not have
    drawn = torch.rand(3)
    torch.manual_seed(rank_seed(7, 1))
    assert torch.equal(drawn, torch.rand(3))
