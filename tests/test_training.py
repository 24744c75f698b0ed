"""The training loop: learning, DDP (gloo, 2 processes), kill and resume, NaN steps, checkpoints."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from factories import STUDENT_SIZES
from torch import nn

from wavflow.checkpoint import CheckpointError, build_teacher, load_checkpoint, load_model
from wavflow.config import load_recipe
from wavflow.objectives import LikelihoodLoss, Objective, likelihood_objective
from wavflow.training import EMA, TrainingError, learning_rate, train

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny_teacher.toml"


def _teacher_objective(recipe):
    torch.manual_seed(recipe.train.seed)
    return likelihood_objective("teacher", build_teacher(recipe), recipe.features)


@pytest.mark.slow
def test_teacher_beats_the_context_free_baseline(prepared_dir, tmp_path):
    recipe = load_recipe(TINY, ["train.steps=200", "train.eval_every=200"])
    state = train(
        _teacher_objective(recipe), recipe, prepared_dir, tmp_path / "run", progress=False
    )
    final = state.history[-1]
    assert final["val/nll"] < final["val/baseline_nll"] - 0.3, final
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*lines)
    assert {"train/nll", "train/lr", "train/grad_norm", "train/samples_per_s", "val/nll"} <= keys
    assert list((tmp_path / "run" / "tensorboard").iterdir())
    model, saved_recipe, state_dict = load_model(tmp_path / "run" / "best.pt")
    assert saved_recipe == recipe and state_dict["step"] == 200


def test_learning_rate_schedule():
    cfg = load_recipe(
        None, ["train.steps=100", "train.warmup_steps=10", "train.lr=1.0", "train.min_lr_ratio=0.1"]
    ).train
    assert learning_rate(0, cfg) == pytest.approx(0.1)
    assert learning_rate(9, cfg) == pytest.approx(1.0)
    assert learning_rate(100, cfg) == pytest.approx(0.1)
    assert learning_rate(55, cfg) == pytest.approx(0.55)


def _train_subprocess(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "wavflow", "train-teacher", *args, "--quiet"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(prepared_dir, tmp_path):
    overrides = [
        "--set",
        "train.steps=30",
        "--set",
        "train.checkpoint_every=5",
        "--set",
        "train.eval_every=1000",
        "--set",
        "train.keep_last=10",
    ]
    common = ["--recipe", str(TINY), "--data", str(prepared_dir), *overrides]
    whole = _train_subprocess([*common, "--out", str(tmp_path / "whole")])
    assert whole.wait(timeout=300) == 0, whole.stderr.read().decode()

    killed_dir = tmp_path / "killed"
    run = _train_subprocess([*common, "--out", str(killed_dir)])
    deadline = time.monotonic() + 300
    while not (killed_dir / "ckpt_00000010.pt").exists():
        assert run.poll() is None and time.monotonic() < deadline, "run ended before the kill"
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert not (killed_dir / "ckpt_00000030.pt").exists(), "the kill came too late to test"
    resumed = _train_subprocess(
        ["--out", str(killed_dir), "--data", str(prepared_dir), "--resume", *overrides]
    )
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()

    a = load_checkpoint(tmp_path / "whole" / "ckpt_00000030.pt")
    b = load_checkpoint(killed_dir / "ckpt_00000030.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["ema"]:
        assert torch.equal(a["ema"][key], b["ema"][key]), key


def test_resume_maps_the_checkpoint_to_the_training_device_and_copies_the_ema_into_place(
    prepared_dir, tmp_path
):
    # On a GPU the checkpoint comes from another device (tests/test_gpu.py); here the load is
    # mapped explicitly, and the EMA must keep its own tensors (the model's device), not take
    # the checkpoint's as it did.
    recipe = load_recipe(TINY, ["train.steps=2", "train.eval_every=1000", 'train.device="cpu"'])
    objective = dataclasses.replace(_teacher_objective(recipe), media=None)
    train(objective, recipe, prepared_dir, tmp_path / "run", progress=False)
    path = tmp_path / "run" / "ckpt_00000002.pt"
    saved = load_checkpoint(path, map_location=torch.device("cpu"))
    ema = EMA(objective.model, 0.99)
    own = {key: value.data_ptr() for key, value in ema.state.items()}
    ema.load(saved["ema"], saved["ema_updates"])
    for key, value in ema.state.items():
        assert value.data_ptr() == own[key] and torch.equal(value, saved["ema"][key]), key
    assert ema.updates == 2
    with pytest.raises(TrainingError, match="EMA"):
        ema.load(dict(list(saved["ema"].items())[1:]), 0)
    more = load_recipe(TINY, ["train.steps=3", "train.eval_every=1000", 'train.device="cpu"'])
    resumed = dataclasses.replace(_teacher_objective(more), media=None)
    state = train(resumed, more, prepared_dir, tmp_path / "run", resume=True, progress=False)
    assert state.step == 3 and load_checkpoint(tmp_path / "run" / "ckpt_00000003.pt")["ema"]


def test_new_run_refuses_to_overwrite_checkpoints(prepared_dir, tmp_path):
    recipe = load_recipe(TINY, ["train.steps=2", "train.eval_every=1000"])
    train(_teacher_objective(recipe), recipe, prepared_dir, tmp_path / "run", progress=False)
    with pytest.raises(TrainingError, match="--resume"):
        train(_teacher_objective(recipe), recipe, prepared_dir, tmp_path / "run", progress=False)


def test_train_uses_the_dataset_it_is_given_without_opening_it_again(
    prepared_dir, tmp_path, monkeypatch
):
    from wavflow.data import DataError, PreparedData

    recipe = load_recipe(TINY, ["train.steps=2", "train.eval_every=1000"])
    data = PreparedData(prepared_dir, expected=recipe.features)
    opened = []
    real_init = PreparedData.__init__
    monkeypatch.setattr(
        PreparedData, "__init__", lambda self, *a, **k: opened.append(a) or real_init(self, *a, **k)
    )
    state = train(_teacher_objective(recipe), recipe, data, tmp_path / "run", progress=False)
    assert state.step == 2 and opened == []
    with pytest.raises(DataError, match="without F0"):  # a given dataset is still checked
        pitch = load_recipe(TINY, ['conditioning.pitch="harmonic"', 'data.f0_method="pyin"'])
        train(_teacher_objective(pitch), pitch, data, tmp_path / "pitch", progress=False)


class _FlakyLoss(nn.Module):
    """The likelihood loss, but NaN at the listed steps (counted by calls)."""

    def __init__(self, model: nn.Module, bad_calls: set[int]) -> None:
        super().__init__()
        self.inner, self.bad_calls, self.calls = LikelihoodLoss(model), bad_calls, 0

    def forward(self, batch):
        self.calls += 1
        losses = self.inner(batch)
        if self.calls in self.bad_calls or -1 in self.bad_calls:
            losses["nll"] = losses["nll"] * float("nan")
        return losses


def _flaky_objective(recipe, bad_calls):
    base = _teacher_objective(recipe)
    return Objective(
        "teacher", base.model, _FlakyLoss(base.model, bad_calls), base.weights, base.validate
    )


def test_nan_steps_are_skipped_and_counted(prepared_dir, tmp_path):
    recipe = load_recipe(TINY, ["train.steps=8", "train.eval_every=1000", "train.log_every=1"])
    objective = _flaky_objective(recipe, {2, 3, 6})
    before = {k: v.clone() for k, v in objective.model.state_dict().items()}
    state = train(objective, recipe, prepared_dir, tmp_path / "run", progress=False)
    assert state.step == 8 and state.skipped_steps == 3
    after = objective.model.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_too_many_nan_steps_stop_with_the_last_good_checkpoint(prepared_dir, tmp_path):
    recipe = load_recipe(
        TINY,
        [
            "train.steps=20",
            "train.eval_every=1000",
            "train.max_bad_steps=3",
            "train.checkpoint_every=2",
        ],
    )
    objective = _flaky_objective(recipe, {5, 6, 7, 8, 9, 10})
    with pytest.raises(TrainingError, match="non-finite losses in a row"):
        train(objective, recipe, prepared_dir, tmp_path / "run", progress=False)
    kept = load_checkpoint(tmp_path / "run" / "ckpt_00000004.pt")
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())


def test_untrusted_checkpoints_are_refused(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pt"
    with path.open("wb") as file:
        pickle.dump({"config": {}, "kind": "teacher", "model": Exploit()}, file)
    with pytest.raises(CheckpointError, match="could run code"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["waveglow", "flowavenet", "squeezewave"])
def test_maximum_likelihood_lowers_a_coupling_students_validation_nll(kind, prepared_dir, tmp_path):
    from wavflow.checkpoint import build_student

    recipe = load_recipe(
        TINY,
        [
            f'student.kind="{kind}"',
            *STUDENT_SIZES[kind],
            "train.steps=60",
            "train.eval_every=30",
            "train.lr=3e-3",
        ],
    )
    torch.manual_seed(0)
    objective = likelihood_objective("student", build_student(recipe), recipe.features)
    first = objective.validate(objective.model.eval(), _validation(prepared_dir, recipe))["nll"]
    state = train(objective, recipe, prepared_dir, tmp_path / "run", progress=False)
    final = state.history[-1]
    assert final["val/nll"] < first - 0.05, (first, final)


def _validation(prepared_dir, recipe):
    from wavflow.data import PreparedData, SegmentDataset

    dataset = SegmentDataset(
        PreparedData(prepared_dir), "val", recipe.data.segment_length, random_crops=False
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=recipe.train.batch_size)
    return [next(iter(loader))]
