"""Precision under bfloat16 autocast, emulated on the CPU (`torch.autocast("cpu")`).

Training on CUDA runs under bfloat16 autocast. The WaveNet stacks may compute in bfloat16, but
what reads audio, what the heads output, the invertible 1x1 convs, log-dets, log-probabilities
and KL terms must stay float32 (`wavflow.nn.precision`).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from factories import SMALLEST_WAVENET
from test_flows import BATCH, CASES, build, perturb

from wavflow.checkpoint import build_teacher
from wavflow.config import DistillConfig, load_recipe
from wavflow.data import PreparedData, SegmentDataset
from wavflow.distill import DistillLoss
from wavflow.flows import IAFStudent, WaveGlow
from wavflow.nn.conditioning import ConditioningSpec
from wavflow.nn.wavenet import WaveNetStack
from wavflow.objectives import LikelihoodLoss, likelihood_objective
from wavflow.training import train

TINY_TEACHER = Path(__file__).resolve().parents[1] / "recipes" / "tiny_teacher.toml"


def _bf16_autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def test_a_stack_reads_audio_and_writes_its_head_in_float32() -> None:
    stack = WaveNetStack(1, 2, **SMALLEST_WAVENET)
    seen = {}
    for name in ("input", "head_out", "head_hidden"):
        getattr(stack, name).register_forward_hook(
            lambda module, inputs, output, name=name: seen.update({name: output.dtype})
        )
    with torch.no_grad(), _bf16_autocast():
        out = stack(torch.rand(2, 1, 16))
    assert out.dtype == torch.float32
    assert seen == {
        "input": torch.float32,
        "head_out": torch.float32,
        "head_hidden": torch.bfloat16,
    }


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_every_flow_round_trips_under_autocast(case) -> None:
    # Without float32 invertible convs and coupling outputs this misses by 2e-3 to 1e-1.
    built = build(case, perturbed=False, warm=False)
    perturb(built.module, std=0.05)
    built.module.float()
    flow = built.flow
    z, cond = built.z.float(), None if built.cond is None else built.cond.float()
    with torch.no_grad():
        x, logdet = flow(z, cond)  # in float32, which also initialises any ActNorm
        with _bf16_autocast():
            z_back, inverse_logdet = flow.inverse(x, cond)
            x_back, _ = flow(z_back, cond)
    assert x_back.dtype == torch.float32 and inverse_logdet.dtype == torch.float32
    assert (x_back - x).abs().max() < 1e-4
    torch.testing.assert_close(inverse_logdet, -logdet, rtol=1e-3, atol=1e-2)
    assert inverse_logdet.shape == (BATCH,)


@pytest.mark.slow
def test_a_trained_teachers_log_prob_under_autocast_is_within_0_05_nats(prepared_dir, tmp_path):
    recipe = load_recipe(
        TINY_TEACHER, ["train.steps=200", "train.eval_every=1000", "train.checkpoint_every=1000"]
    )
    torch.manual_seed(0)
    objective = likelihood_objective("teacher", build_teacher(recipe), recipe.features)
    train(objective, recipe, prepared_dir, tmp_path / "run", progress=False)
    dataset = SegmentDataset(PreparedData(prepared_dir), "val", 1024, random_crops=False)
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=8)))
    loss = LikelihoodLoss(objective.model).eval()
    with torch.no_grad():
        exact = loss(batch)["nll"]
        with _bf16_autocast():
            low = loss(batch)["nll"]
            params = objective.model(batch["audio"], objective.model.condition(batch["feats"]))
    assert params.dtype == torch.float32 and low.dtype == torch.float32
    assert exact < 0.0, "the teacher did not train"
    assert (low - exact).abs() < 0.05, (float(exact), float(low))


def _tiny_teacher() -> torch.nn.Module:
    torch.manual_seed(0)
    teacher = build_teacher(load_recipe(TINY_TEACHER))
    perturb(teacher, std=0.05)
    return teacher


@pytest.mark.parametrize("estimator", ["sample", "closed_form"])
def test_kl_terms_under_autocast_are_float32_and_close(estimator: str) -> None:
    torch.manual_seed(1)
    if estimator == "sample":
        student = WaveGlow(ConditioningSpec(20, 64), **WaveGlow.PRESETS["tiny"])
    else:
        student = IAFStudent(
            ConditioningSpec(20, 64), **{**IAFStudent.PRESETS["tiny"], "base": "gaussian"}
        )
    perturb(student, std=0.05)
    cfg = DistillConfig(weights={"kl": 1.0}, kl_estimator=estimator, skip_receptive_field=False)
    loss = DistillLoss(student, _tiny_teacher(), cfg)
    generator = torch.Generator().manual_seed(2)
    batch = {
        "feats": torch.randn(2, 20, 4, generator=generator) - 4.0,
        "audio": 0.1 * torch.randn(2, 1, 256, generator=generator),
        "speaker": torch.zeros(2, dtype=torch.long),
    }
    terms = {}
    for enabled in (False, True):
        torch.manual_seed(3)  # the same student noise
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            terms[enabled] = loss(batch)["kl"]
    assert terms[True].dtype == torch.float32
    assert (terms[True] - terms[False]).abs() < 0.05 * max(1.0, float(terms[False].abs()))
