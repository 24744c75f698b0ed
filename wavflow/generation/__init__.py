"""Sequential generation from a causal WaveNet stack: weight folding (`folding`), the explicit
incremental state (`state`), the eager step (`eager`), the C++ kernel's loader (`kernel`, source
in wavflow/csrc) and the front that picks between them (`cached`)."""

from wavflow.generation.cached import BACKENDS, GeneratedChunk, IncrementalWaveNet
from wavflow.generation.folding import FoldedStack, fold_stack
from wavflow.generation.kernel import (
    KERNEL_SECTIONS,
    check_abi,
    kernel_cache_dir,
    kernel_error,
    load_kernel,
)
from wavflow.generation.state import GenerationState

__all__ = [
    "BACKENDS",
    "KERNEL_SECTIONS",
    "FoldedStack",
    "GeneratedChunk",
    "GenerationState",
    "IncrementalWaveNet",
    "check_abi",
    "fold_stack",
    "kernel_cache_dir",
    "kernel_error",
    "load_kernel",
]
