"""What stays in float32 when training runs under bfloat16 autocast.

Under `torch.autocast` convolutions and matrix products run in bfloat16, whose 8-bit mantissa
rounds by up to 2^-9 (0.2%) relative. Inside a WaveNet stack that is harmless, and it is where
the time goes. It is not harmless where exact numbers meet the network:

- audio entering a stack (a sample near 0.5 moves by up to 1e-3, a third of a voiced σ);
- output heads (a teacher's predicted mean off by 1.5e-3; a flow's log-scale that is rounded
  differently in its two directions breaks invertibility);
- invertible 1x1 convolutions (W z in bfloat16: a WaveGlow round trip misses by 5e-3);
- log-dets, log-probabilities and KL terms (sums over T * C terms of 1e4 nats, which bfloat16
  would round by tens of nats).

`full_precision` runs such a piece with autocast off and its inputs cast up to float32. Outside
autocast it changes nothing: float64 tests stay float64 and a model cast to bfloat16 for
inference stays bfloat16.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def at_least_float32(*dtypes: torch.dtype) -> torch.dtype:
    """float32, or float64 if any of `dtypes` is: never bfloat16 or float16."""
    dtype = torch.float32
    for other in dtypes:
        dtype = torch.promote_types(dtype, other)
    return dtype


def full_precision(function: Callable[..., Tensor], *inputs: Tensor) -> Tensor:
    """`function(*inputs)` outside autocast, inputs cast to at least float32.

    Args:
        function: a module or tensor function (a conv, `torch.matmul`).
        inputs: its tensor arguments, all on one device.

    Returns:
        What `function` returns: float32 (or float64) under autocast, else in its usual dtype.
    """
    device_type = inputs[0].device.type
    if not torch.is_autocast_enabled(device_type):
        return function(*inputs)
    with torch.autocast(device_type, enabled=False):
        return function(*(x.to(at_least_float32(x.dtype)) for x in inputs))
