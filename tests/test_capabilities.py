"""Declared capabilities: every model states what it is, and what it states is true."""

from __future__ import annotations

import pytest
import torch
from factories import HOP, N_MELS, tiny_student, tiny_teacher

from wavflow.capabilities import Capabilities
from wavflow.distill import choose_estimator

FRAMES = 12
DTYPE = torch.float64


def test_every_model_declares_its_capabilities() -> None:
    teacher = tiny_teacher("gaussian", n_speakers=3, n_harmonics=2, sample_rate=16000).capabilities
    assert teacher == Capabilities(
        sequential=True,
        causal=True,
        receptive_field=tiny_teacher("gaussian").receptive_field,
        lookahead=2 * HOP,
        time_multiple=1,
        chunk_seconds=None,
        takes_pitch=True,
        n_speakers=3,
        location_scale=False,
    )
    iaf = tiny_student("iaf", n_speakers=2).capabilities
    assert iaf.causal and iaf.location_scale and not iaf.sequential and not iaf.takes_pitch
    assert iaf.receptive_field > 1 and iaf.lookahead == 2 * HOP and iaf.chunk_seconds == 4.0
    assert iaf.n_speakers == 2
    for kind in ("waveglow", "flowavenet", "squeezewave"):
        student = tiny_student(kind)
        declared = student.capabilities
        assert not declared.causal and not declared.location_scale and not declared.sequential
        assert declared.lookahead is None and declared.receptive_field is None
        assert declared.time_multiple == student.time_multiple > 1
    pitched = tiny_student("squeezewave", n_harmonics=2, sample_rate=16000)
    assert pitched.capabilities.takes_pitch


def test_the_iaf_receptive_field_and_lookahead_are_true() -> None:
    """x_t reads z_{t-R+1} .. z_t and mel frames up to `lookahead` samples after t."""
    student = tiny_student("iaf").eval()
    with torch.no_grad():  # the output convs start at zero: give x a dependence on z
        for name, parameter in student.named_parameters():
            if "head_out" in name:
                parameter.normal_(0.0, 0.3)
    declared = student.capabilities
    generator = torch.Generator().manual_seed(1)
    feats = torch.randn(1, N_MELS, FRAMES, generator=generator, dtype=DTYPE)
    z = torch.randn(1, 1, FRAMES * HOP, generator=generator, dtype=DTYPE)
    with torch.no_grad():
        x, _ = student.flow(z, student.condition(feats))
        moved_z = z.clone()
        moved_z[..., 5] += 1.0
        x_z, _ = student.flow(moved_z, student.condition(feats))
        changed = (x_z - x).abs()[0, 0] > 0
        assert changed.nonzero().flatten().tolist() == list(range(5, 5 + declared.receptive_field))
        cut = 8  # frames from here on change
        moved_feats = feats.clone()
        moved_feats[..., cut:] += 1.0
        x_mel, _ = student.flow(z, student.condition(moved_feats))
    safe = cut * HOP - declared.lookahead
    assert torch.equal(x_mel[..., :safe], x[..., :safe])
    assert not torch.equal(x_mel[..., safe : cut * HOP], x[..., safe : cut * HOP])


def test_the_teacher_lookahead_is_true() -> None:
    teacher = tiny_teacher("gaussian").eval()
    generator = torch.Generator().manual_seed(2)
    feats = torch.randn(1, N_MELS, FRAMES, generator=generator, dtype=DTYPE)
    x = torch.rand(1, 1, FRAMES * HOP, generator=generator, dtype=DTYPE) * 2 - 1
    cut = 8
    moved = feats.clone()
    moved[..., cut:] -= 1.0
    with torch.no_grad():
        params, params_moved = (
            teacher(x, teacher.condition(feats)),
            teacher(x, teacher.condition(moved)),
        )
    safe = cut * HOP - teacher.capabilities.lookahead
    assert torch.equal(params[..., :safe], params_moved[..., :safe])


def test_the_kl_estimator_follows_the_declared_location_scale() -> None:
    teacher = tiny_teacher("gaussian")
    assert choose_estimator(tiny_student("iaf", base="gaussian"), teacher, "auto") == "closed_form"
    assert choose_estimator(tiny_student("iaf"), teacher, "auto") == "per_step"  # logistic base
    assert choose_estimator(tiny_student("waveglow"), teacher, "auto") == "sample"
    with pytest.raises(ValueError, match="per_step"):
        choose_estimator(tiny_student("squeezewave"), teacher, "per_step")


@pytest.mark.parametrize("kind", ["teacher", "iaf", "waveglow", "flowavenet", "squeezewave"])
def test_every_model_synthesizes_through_the_vocoder_interface(kind: str) -> None:
    """`synthesize` gives each model's own sampling path for the same generator: the teacher's
    cached generation, a student's parallel pass."""
    model = (tiny_teacher("gaussian") if kind == "teacher" else tiny_student(kind)).eval()
    feats = torch.randn(2, N_MELS, 8, generator=torch.Generator().manual_seed(3), dtype=DTYPE)
    cond = model.condition(feats)
    x, state = model.synthesize(cond, 0.8, torch.Generator().manual_seed(4))
    assert x.shape == (2, 1, 8 * HOP) and torch.isfinite(x).all()
    if kind == "teacher":
        expected, _ = model.generate(cond, "cached", 0.8, torch.Generator().manual_seed(4))
        assert state is not None and int(state.position[0]) == 8 * HOP
    else:
        expected = model.sample(cond, 0.8, torch.Generator().manual_seed(4))
        assert state is None
    assert torch.equal(x, expected)


def test_the_teacher_synthesizes_on_from_its_state_and_a_student_refuses_one() -> None:
    """Two calls, the second from the first's state, give one call's samples on the
    concatenated noise."""
    teacher = tiny_teacher("gaussian").eval()
    cond = teacher.condition(
        torch.randn(1, N_MELS, 8, generator=torch.Generator().manual_seed(5), dtype=DTYPE)
    )
    half = 4 * HOP
    first, state = teacher.synthesize(cond[..., :half], 1.0, torch.Generator().manual_seed(6))
    second, _ = teacher.synthesize(cond[..., half:], 1.0, torch.Generator().manual_seed(7), state)
    noise = torch.cat(
        [
            teacher.head.draw_noise(1, half, torch.Generator().manual_seed(seed), "cpu")
            for seed in (6, 7)
        ],
        dim=-1,
    )
    whole, _ = teacher.generate(cond, "cached", noise=noise)
    assert torch.equal(torch.cat([first, second], dim=-1), whole)
    student = tiny_student("iaf")
    with pytest.raises(ValueError, match="keeps no generation state"):
        student.synthesize(student.condition(torch.randn(1, N_MELS, 8, dtype=DTYPE)), state=state)
