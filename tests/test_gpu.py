"""Checks that need a CUDA device: run with `pytest --gpu -m gpu` (scripts/gpu_check.sh does).

Without `--gpu` and a CUDA device every test here is skipped (conftest.py); the one test that
is not marked `gpu` checks that scripts/gpu_check.sh says so plainly and exits 0 on the CPU.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from test_distributed import (
    RUNS,
    _objective,
    _recipe,
    check_ranks_agree,
    every_model_worker,
    free_port,
)
from test_flows import STUDENT_CASES, build, perturb

from wavflow.checkpoint import build_student, build_teacher, checkpoint_state, save_checkpoint
from wavflow.cli import main
from wavflow.config import load_recipe
from wavflow.data import PreparedData, SegmentDataset
from wavflow.training import train

ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.device("cuda")


def _batch(prepared_dir: Path, recipe) -> dict:
    dataset = SegmentDataset(PreparedData(prepared_dir), "train", recipe.data.segment_length)
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=2)))
    return {k: v.to(CUDA) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@pytest.mark.gpu
@pytest.mark.parametrize(("kind", "objective"), RUNS, ids=[f"{k}-{o}" for k, o in RUNS])
def test_a_training_step_of_every_model_with_and_without_bf16_autocast(
    kind, objective, prepared_dir
):
    recipe = _recipe(kind, steps=1, device="cuda")
    built = _objective(kind, objective, recipe)
    loss = built.loss.to(CUDA).train()
    batch = _batch(prepared_dir, recipe)
    for autocast in (False, True):
        built.model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            losses = loss(batch)
        total = sum(built.weights.get(k, 0.0) * v for k, v in losses.items())
        assert all(v.dtype == torch.float32 for v in losses.values()), (autocast, losses)
        assert torch.isfinite(total), (autocast, losses)
        total.backward()
        grads = [p.grad for p in built.model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads), autocast


@pytest.mark.gpu
@pytest.mark.parametrize("case", STUDENT_CASES, ids=[case.name for case in STUDENT_CASES])
def test_every_student_round_trips_under_cuda_autocast(case) -> None:
    built = build(case, perturbed=False, warm=False)
    perturb(built.module, std=0.05)
    built.module.float().to(CUDA)
    z, cond = built.z.float().to(CUDA), built.cond.float().to(CUDA)
    with torch.no_grad():
        x, _ = built.flow(z, cond)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            x_back, _ = built.flow(built.flow.inverse(x, cond)[0], cond)
    assert x_back.dtype == torch.float32 and (x_back - x).abs().max() < 1e-4


@pytest.mark.gpu
def test_a_cpu_checkpoint_resumes_on_cuda_with_ema(prepared_dir, tmp_path):
    run = tmp_path / "run"
    for steps, device in ((2, "cpu"), (4, "cuda"), (6, "cuda")):  # CPU -> CUDA, CUDA -> CUDA
        extra = ("train.checkpoint_every=2", "train.ema_decay=0.9")
        recipe = _recipe("teacher", steps, extra, device)
        objective = _objective("teacher", "mle", recipe)
        train(objective, recipe, prepared_dir, run, resume=steps > 2, progress=False)
        assert next(objective.model.parameters()).device.type == device
    saved = torch.load(run / "ckpt_00000006.pt", weights_only=True)
    assert saved["step"] == 6 and saved["ema_updates"] == 6
    assert all(torch.isfinite(v).all() for v in saved["ema"].values() if v.is_floating_point())


@pytest.mark.gpu
def test_cached_generation_equals_naive_on_cuda():
    torch.manual_seed(0)
    recipe = load_recipe(ROOT / "recipes" / "tiny_teacher.toml")
    teacher = build_teacher(recipe)
    perturb(teacher, std=0.05)
    teacher = teacher.to(CUDA).eval()
    generator = torch.Generator().manual_seed(1)
    feats = torch.randn(2, recipe.features.n_mels, 4, generator=generator).to(CUDA) - 4.0
    with torch.no_grad():
        cond = teacher.condition(feats)
        noise = teacher.head.draw_noise(2, cond.shape[-1], generator).to(CUDA)
        naive, _ = teacher.generate(cond, method="naive", noise=noise)
        cached, _ = teacher.generate(cond, method="cached", noise=noise)
    assert naive.device.type == "cuda"
    torch.testing.assert_close(cached, naive, atol=1e-4, rtol=0)


@pytest.mark.gpu
def test_synthesis_and_an_exported_student_on_cuda(tmp_path):
    recipe = _recipe("waveglow", steps=1)
    torch.manual_seed(0)
    student = build_student(recipe)
    checkpoint = tmp_path / "student.pt"
    save_checkpoint(checkpoint, checkpoint_state("student", recipe, student, []))
    mel = np.random.default_rng(0).normal(-4.0, 1.0, (recipe.features.n_mels, 8))
    np.save(tmp_path / "clip.npy", mel.astype(np.float32))
    command = ["synthesize", str(tmp_path / "clip.npy"), "--checkpoint", str(checkpoint)]
    assert main([*command, "--out", str(tmp_path / "wav"), "--device", "cuda"]) == 0
    assert list((tmp_path / "wav").glob("*.wav"))
    feats = torch.from_numpy(mel).float()[None].to(CUDA)
    noise = torch.randn(1, 1, 8 * recipe.features.hop_length, device=CUDA)
    for fmt in ("pt2", "torchscript"):  # exported on the CPU, run on CUDA
        exported = tmp_path / f"student.{fmt}"
        command = ["export", "--checkpoint", str(checkpoint), "--out", str(exported)]
        assert main([*command, "--format", fmt]) == 0
        if fmt == "pt2":
            module = torch.export.load(str(exported)).module().to(CUDA)
        else:
            module = torch.jit.load(str(exported), map_location=CUDA)
        audio = module(feats, noise)
        assert audio.device.type == "cuda" and torch.isfinite(audio).all(), fmt


@pytest.mark.gpu
def test_ddp_with_nccl_on_the_gpus_present(prepared_dir, tmp_path):
    world = torch.cuda.device_count()
    args = (world, free_port(), str(prepared_dir), str(tmp_path), "nccl")
    mp.spawn(every_model_worker, args=args, nprocs=world)
    check_ranks_agree(tmp_path, world)


def test_gpu_check_on_a_machine_without_cuda_says_what_it_skipped(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OUT": str(tmp_path)}
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu_check.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "no CUDA device" in done.stdout and "were skipped" in done.stdout
    assert "were skipped" in (tmp_path / "gpu_check.md").read_text()
