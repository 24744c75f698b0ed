"""The WaveNet stack's fused inference path equals its training-time forward."""

from __future__ import annotations

import pytest
import torch

import wavflow.nn.wavenet as wavenet
from wavflow.nn.wavenet import WaveNetStack


def _stack(causal: bool, input_kernel_size: int = 1, cond_channels: int = 5) -> WaveNetStack:
    torch.manual_seed(0)
    net = WaveNetStack(
        2,
        4,
        6,
        1,
        3,
        16,
        32,
        24,
        cond_channels,
        causal=causal,
        input_kernel_size=input_kernel_size,
    ).double()
    torch.nn.init.normal_(net.head_out.weight)  # zero_output=False, but be sure it is not 0
    return net


def _both(net: WaveNetStack, x: torch.Tensor, cond: torch.Tensor | None):
    with torch.no_grad():
        reference = net(x, cond)
    with torch.inference_mode():
        fused = net(x, cond)
    return reference, fused


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("tile", [3, 40, 8192])  # shorter than a tap's reach, not dividing T
def test_fused_inference_equals_forward(causal: bool, tile: int, monkeypatch) -> None:
    monkeypatch.setattr(wavenet, "FUSED_TILE", tile)
    net = _stack(causal, input_kernel_size=4 if causal else 3)
    x = torch.randn(3, 2, 301, dtype=torch.float64)
    cond = torch.randn(3, 5, 301, dtype=torch.float64)
    reference, fused = _both(net, x, cond)
    assert reference.abs().max() > 0.1
    torch.testing.assert_close(fused, reference, rtol=0, atol=1e-12)


def test_fused_inference_without_conditioning() -> None:
    net = _stack(causal=True, cond_channels=0)
    x = torch.randn(2, 2, 100, dtype=torch.float64)
    reference, fused = _both(net, x, None)
    torch.testing.assert_close(fused, reference, rtol=0, atol=1e-12)


def test_fused_inference_is_what_inference_mode_runs(monkeypatch) -> None:
    """Under inference mode the blocks' batched forward is not called; with grad it is."""
    net = _stack(causal=True)
    calls = []
    forward = wavenet.ResidualBlock.forward

    def counted(self, x, cond):
        calls.append(1)
        return forward(self, x, cond)

    monkeypatch.setattr(wavenet.ResidualBlock, "forward", counted)
    x = torch.randn(1, 2, 50, dtype=torch.float64)
    cond = torch.randn(1, 5, 50, dtype=torch.float64)
    with torch.inference_mode():
        net(x, cond)
    assert not calls
    with torch.no_grad():
        net(x, cond)
    assert len(calls) == len(net.blocks)
