"""Fast WaveNet cached generation: per-layer queues, so one sample costs O(layers), not O(field).

`IncrementalWaveNet` reads a `WaveNetStack` once, folds its weights (weight norm, the sqrt(1/2)
residual scale, the sqrt(1/L) skip scale, sigmoid(b) = (1 + tanh(b / 2)) / 2) and then generates
sample by sample. Each layer keeps a ring buffer of its recent inputs, so a step reads K taps per
layer instead of re-running the receptive field. The conditioning projections of all layers are
precomputed in time chunks (one matmul per chunk), so memory stays bounded for long audio.

Two backends compute the same thing:

- "eager": a few PyTorch ops per layer (index_select of the taps, one addmm for the dilated conv
  with the cond projection as its input, one in-place tanh on all gates, one addcmul, one addmm
  for the residual with its bias carried by a constant-1 input); all skip outputs go through one
  matmul per step. Any dtype and device: the reference.
- "cpp": the whole generation loop in one call of a small C++ kernel, float32 activations with
  float32 or bfloat16 weights. Besides fusing everything, it reads each layer's past-tap weights
  once per d steps (one (d B) x (K - 1) R matmul per block, see `worker` in the source), runs
  groups of items on separate threads and, for small batches, splits a group's gate units over
  threads (dropping to one thread if another process keeps a core busy).

The kernel is compiled on first use with the system C++ compiler ($CXX, default c++; ~4 s) into
`kernel_cache_dir()` (~/.cache/wavflow/kernels, or $WAVFLOW_CACHE_DIR) and loaded with ctypes, so
it needs no PyTorch headers. If the compiler is missing or the build fails, "auto" falls back to
"eager" with a one-line warning.

References:
    Paine et al., "Fast Wavenet Generation Algorithm", arXiv:1611.09482.
    van den Oord et al., "WaveNet: A Generative Model for Raw Audio", arXiv:1609.03499.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from wavflow.distributions import GaussianOutput, LogisticMixtureOutput, shift_by_excitation
from wavflow.nn.wavenet import WaveNetStack

BACKENDS = ("auto", "cpp", "eager")
# Floats of precomputed cond projections held at once; bounds memory for long audio. The eager
# path holds them for the whole batch; the kernel per group of rows, fewer, so that they stay in
# cache next to the weights.
COND_CHUNK_FLOATS = 8 * 2**20
KERNEL_CHUNK_FLOATS = 2**18
# The C++ kernel stores weights in panels of 32 output channels; it zero-pads channels to that.
PANEL = 32
# Sections of the kernel's step, timed by `IncrementalWaveNet.profile_kernel` (`enum Section`).
KERNEL_SECTIONS = (
    "cond projection",
    "input conv",
    "past taps (every d steps)",
    "current tap + cond",
    "gate tanh",
    "barrier wait",
    "residual 1x1",
    "skip 1x1",
    "head 1x1 x2",
    "sample",
)


@dataclass
class FoldedStack:
    """The stack's weights, folded for step-by-step use, as (in, out) matrices (float64).

    With u_l = 2^(l/2) h_l the residual update is u_{l+1} = u_l + 2^(l/2) (W_r z + b_r), so the
    sqrt(1/2) scale moves into the weights; z' = tanh(a) (1 + tanh(b / 2)) = 2 z, so the gate's
    halving moves into the rows that read z'.

    Shapes: L layers, K taps, R residual, G gate, H = G / 2 gated units, S skip, C cond, P params.
    """

    dilations: list[int]
    input_weight: Tensor  # (K_in, R): tap j reads x_{t - K_in + j}
    input_bias: Tensor  # (R,)
    dilated: Tensor  # (L, K * R, G): tap k reads u_l at t - (K - 1 - k) d
    cond: Tensor  # (C, L * G) or (0, L * G) without conditioning
    gate_bias: Tensor  # (L * G,)
    residual: Tensor  # (L, H, R), reads z'
    residual_bias: Tensor  # (L, R)
    skip: Tensor  # (L * H, S), reads z' of all layers; includes the sqrt(1 / L) scale
    skip_bias: Tensor  # (S,)
    hidden: Tensor  # (S, S)
    hidden_bias: Tensor  # (S,)
    out: Tensor  # (S, P)
    out_bias: Tensor  # (P,)

    @property
    def sizes(self) -> tuple[int, int, int, int, int, int]:
        """(L, K, R, G, S, P)."""
        n_layers, taps_by_r, gates = self.dilated.shape
        residual = self.input_bias.numel()
        return (
            n_layers,
            taps_by_r // residual,
            residual,
            gates,
            self.skip.shape[1],
            self.out.shape[1],
        )


def fold_stack(stack: WaveNetStack) -> FoldedStack:
    """Read the effective weights of a causal, one-input-channel stack and fold its constants.

    Args:
        stack: the `WaveNetStack` (weight norm or not); it is not modified.

    Returns:
        A `FoldedStack` in float64 on the CPU.
    """
    if stack.input.in_channels != 1 or not stack.input.causal:
        raise ValueError("incremental generation needs a causal stack with one input channel")

    def weight(conv: torch.nn.Conv1d) -> Tensor:
        return conv.weight.detach().to("cpu", torch.float64)  # effective weight under weight norm

    def bias(conv: torch.nn.Conv1d) -> Tensor:
        if conv.bias is None:
            return torch.zeros(conv.out_channels, dtype=torch.float64)
        return conv.bias.detach().to("cpu", torch.float64)

    n_layers = len(stack.blocks)
    residual_channels = stack.input.out_channels
    gate_channels = stack.blocks[0].dilated.out_channels
    half = gate_channels // 2
    skip_scale = math.sqrt(1.0 / n_layers)
    # Halve the rows feeding sigmoid: sigmoid(b) = (1 + tanh(b / 2)) / 2.
    gate_scale = torch.ones(gate_channels, dtype=torch.float64)
    gate_scale[half:] = 0.5

    dilated, conds, gate_biases, residual, residual_bias, skip = [], [], [], [], [], []
    skip_bias = 0.0
    for index, block in enumerate(stack.blocks):
        if not block.dilated.causal:
            raise ValueError("incremental generation needs causal dilated convs")
        alpha = 2.0 ** (index / 2)  # u_l = alpha h_l
        w = weight(block.dilated)  # (G, R, K)
        # (G, R, K) -> (K, R, G) -> (K * R, G), and u_l = alpha h_l undone on the input side.
        dilated.append(w.permute(2, 1, 0).reshape(-1, gate_channels) * gate_scale / alpha)
        gate_biases.append(bias(block.dilated) * gate_scale)
        if block.cond is not None:
            conds.append(weight(block.cond)[:, :, 0].T * gate_scale)  # (C, G)
        w_out = weight(block.out)[:, :, 0]  # (R + S, H)
        b_out = bias(block.out)
        # 0.5: the step computes z' = 2 z.
        residual.append(0.5 * alpha * w_out[:residual_channels].T)
        residual_bias.append(alpha * b_out[:residual_channels])
        skip.append(0.5 * skip_scale * w_out[residual_channels:].T)
        skip_bias = skip_bias + skip_scale * b_out[residual_channels:]
    return FoldedStack(
        dilations=list(stack.dilations),
        input_weight=weight(stack.input)[:, 0, :].T.contiguous(),
        input_bias=bias(stack.input),
        dilated=torch.stack(dilated),
        cond=torch.cat(conds, 1) if conds else torch.zeros(0, n_layers * half * 2).double(),
        gate_bias=torch.cat(gate_biases),
        residual=torch.stack(residual),
        residual_bias=torch.stack(residual_bias),
        skip=torch.cat(skip),
        skip_bias=skip_bias,
        hidden=weight(stack.head_hidden)[:, :, 0].T.contiguous(),
        hidden_bias=bias(stack.head_hidden),
        out=weight(stack.head_out)[:, :, 0].T.contiguous(),
        out_bias=bias(stack.head_out),
    )


# The step loop in C++. Activations are float32; weights float32 or bfloat16 (upper 16 bits of a
# float32, widened with a shift). GCC/Clang vector extensions keep it portable: on AVX-512 a `vf`
# is one zmm register, elsewhere the compiler splits it.
_KERNEL_SOURCE = r"""
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <thread>
#include <vector>

typedef float vf __attribute__((vector_size(64)));
typedef uint16_t vh __attribute__((vector_size(32)));
typedef uint32_t vu __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
static const long V = 16;        // floats per vector
static const long PW = 32;       // panel width: weights are stored (N / PW, K, PW)
static const int MAX_TAPS = 16;
static const long MAX_ROWS = 12; // rows per register tile (24 accumulators)

struct Net {
  int64_t n_layers, kernel, residual, gates, skip, params, input_kernel, cond, bf16;
  const int64_t* dilations;
  const void* dilated;      // L panels-major (K * R, G)
  const void* cond_w;       // panel-major (C, L * G)
  const float* gate_b;      // (L * G)
  const void* residual_w;   // L panel-major (H, R)
  const float* residual_b;  // (L, R)
  const void* skip_w;       // panel-major (L * H, S)
  const float* skip_b;      // (S)
  const void* hidden_w;     // panel-major (S, S)
  const float* hidden_b;
  const void* out_w;        // panel-major (S, P)
  const float* out_b;
  const float* input_w;     // (K_in, R)
  const float* input_b;
};
struct Head { int64_t kind, n_mixtures; float log_scale_min, temperature; };
struct Job {
  int64_t length, groups, threads_per_group, params_real, chunk_floats;
  int64_t solo_from;           // tests: drop to one thread per group at this step (-1: never)
  int64_t n_excitation;        // E: stack outputs past P_real are amplitudes of the excitation
  const int64_t* lengths;      // (B,) within a group sorted by length, descending
  const int64_t* group_start;  // (groups + 1,)
  const float* cond;           // (B, T, C)
  const float* noise;          // (B, N, T)
  float* x;                    // (B, T + K_in): x_t at column t + K_in
  float* params_out;           // (B, P_real, T) or null
  const float* excitation;     // (B, E, T): x_t's location moves by sum_e amplitude_e e(t)
  const float* log_level;      // (B, T) or null: the stack models y_t = x_t exp(-l_t)
  int64_t* timers;             // (SECTIONS,) nanoseconds spent per section, or null
};

static inline vf vload(const float* p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
static inline void vstore(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
static inline vf wload(const float* p) { return vload(p); }
#ifdef __AVX512F__
#include <immintrin.h>
static inline vf wload(const uint16_t* p) {  // bfloat16 -> float32: widen, shift into the top
  __m512i u = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16);
  return (vf)_mm512_castsi512_ps(u);
}
static inline vf splat(float s) { return (vf)_mm512_set1_ps(s); }
static inline void relax() { _mm_pause(); }
#else
static inline vf wload(const uint16_t* p) {
  vh h; std::memcpy(&h, p, sizeof h);
  vu u = __builtin_convertvector(h, vu) << 16;
  vf f; std::memcpy(&f, &u, sizeof f); return f;
}
static inline vf splat(float s) { vf v; for (int i = 0; i < V; ++i) v[i] = s; return v; }
static inline void relax() {}
#endif

// Cephes expf for x in [0, 88]: exp(x) = 2^n exp(r), |r| <= ln(2) / 2.
static inline vf vexp_pos(vf x) {
  vf fx = x * 1.44269504088896341f + 0.5f;
  vi n = __builtin_convertvector(fx, vi);  // truncation = floor for fx >= 0
  vf fn = __builtin_convertvector(n, vf);
  vf r = x - fn * 0.693359375f + fn * 2.12194440e-4f;
  vf y = splat(1.9875691500e-4f);
  y = y * r + 1.3981999507e-3f; y = y * r + 8.3334519073e-3f; y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f; y = y * r + 5.0000001201e-1f;
  y = y * (r * r) + r + 1.0f;
  vi bits = (n + 127) << 23;
  vf scale; std::memcpy(&scale, &bits, sizeof scale);
  return y * scale;
}

// Cephes tanhf: odd polynomial below 0.625, 1 - 2 / (exp(2|x|) + 1) above; a few ulp.
static inline vf vtanh(vf x) {
  vu bits; std::memcpy(&bits, &x, sizeof bits);
  vu sign = bits & 0x80000000u;
  vu abs_bits = bits & 0x7fffffffu;
  vf ax; std::memcpy(&ax, &abs_bits, sizeof ax);
  vf z = ax * ax;
  vf p = splat(-5.70498872745e-3f);
  p = p * z + 2.06390887954e-2f; p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f; p = p * z - 3.33332819422e-1f;
  vf small = p * z * ax + ax;
  vf two_ax = ax + ax;
  two_ax = two_ax < 40.0f ? two_ax : splat(40.0f);  // tanh(20) rounds to 1 already
  vf large = 1.0f - 2.0f / (vexp_pos(two_ax) + 1.0f);
  vf r = ax < 0.625f ? small : large;
  vu rb; std::memcpy(&rb, &r, sizeof rb);
  rb |= sign;
  std::memcpy(&r, &rb, sizeof r);
  return r;
}

// One panel: out[r, :PW] = init[r] + add[r] + sum_j sum_k a[j][r * lda + k] w[j * kb + k, :PW]
// (a bias is an `add` with row stride 0).
// KU independent accumulators per output keep the FMA pipes busy when there are few rows.
template <int MR, int KU, typename W>
static inline void tile(int nblk, const float* const* a, long lda, long kb, const W* w,
                        const float* init, long ldi, const float* add, long ldd, float* out,
                        long ldo) {
  vf acc[KU][MR][2];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < 2; ++v) {
      vf s = init ? vload(init + r * ldi + v * V) : vf{};
      acc[0][r][v] = add ? s + vload(add + r * ldd + v * V) : s;
      for (int u = 1; u < KU; ++u) acc[u][r][v] = vf{};
    }
  for (int j = 0; j < nblk; ++j) {
    const float* aj = a[j];
    const W* wj = w + j * kb * PW;
    long k = 0;
    for (; k + KU <= kb; k += KU)
      for (int u = 0; u < KU; ++u) {
        vf b0 = wload(wj + (k + u) * PW), b1 = wload(wj + (k + u) * PW + V);
        for (int r = 0; r < MR; ++r) {
          vf s = splat(aj[r * lda + k + u]);
          acc[u][r][0] += s * b0;
          acc[u][r][1] += s * b1;
        }
      }
    for (; k < kb; ++k) {
      vf b0 = wload(wj + k * PW), b1 = wload(wj + k * PW + V);
      for (int r = 0; r < MR; ++r) {
        vf s = splat(aj[r * lda + k]);
        acc[0][r][0] += s * b0;
        acc[0][r][1] += s * b1;
      }
    }
  }
  for (int u = 1; u < KU; ++u)
    for (int r = 0; r < MR; ++r)
      for (int v = 0; v < 2; ++v) acc[0][r][v] += acc[u][r][v];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < 2; ++v) vstore(out + r * ldo + v * V, acc[0][r][v]);
}

template <int MR, typename W>
static inline void tile_for(int nblk, const float* const* a, long lda, long kb, const W* w,
                            const float* init, long ldi, const float* add, long ldd, float* out,
                            long ldo) {
  tile<MR, MR == 1 ? 4 : (MR == 2 ? 2 : 1), W>(nblk, a, lda, kb, w, init, ldi, add, ldd, out, ldo);
}

// out (m, panels p0..p1) = init + add + sum over nblk blocks of a_j (m, kb) times nblk * kb
// rows of each panel of w (panel p at w + p * pstride). Panels outer, so each stays in L1 for
// all row tiles.
template <typename W>
static void gemm(long m, long p0, long p1, int nblk, const float* const* a, long lda, long kb,
                 const W* w, long pstride, const float* init, long ldi, const float* add,
                 long ldd, float* out, long ldo) {
  if (m <= 0) return;
  const long tiles = (m + MAX_ROWS - 1) / MAX_ROWS;
  const float* ar[MAX_TAPS];
  for (long p = p0; p < p1; ++p) {
    const W* wp = w + p * pstride;
    for (long t = 0, r0 = 0; t < tiles; ++t) {
      const long mr = (m - r0) / (tiles - t);  // balanced tiles: 16 rows -> 8 + 8
      for (int j = 0; j < nblk; ++j) ar[j] = a[j] + r0 * lda;
      const float* in = init ? init + r0 * ldi + p * PW : nullptr;
      const float* ad = add ? add + r0 * ldd + p * PW : nullptr;
      float* o = out + r0 * ldo + p * PW;
      switch (mr) {
#define WAVFLOW_CASE(R) \
  case R: tile_for<R, W>(nblk, ar, lda, kb, wp, in, ldi, ad, ldd, o, ldo); break;
        WAVFLOW_CASE(1) WAVFLOW_CASE(2) WAVFLOW_CASE(3) WAVFLOW_CASE(4)
        WAVFLOW_CASE(5) WAVFLOW_CASE(6) WAVFLOW_CASE(7) WAVFLOW_CASE(8)
        WAVFLOW_CASE(9) WAVFLOW_CASE(10) WAVFLOW_CASE(11) WAVFLOW_CASE(12)
#undef WAVFLOW_CASE
      }
      r0 += mr;
    }
  }
}

// Threads of one group meet here after each layer. Spin briefly, then yield: on a busy machine
// the other thread may be descheduled, and spinning would only delay it.
struct Barrier {
  std::atomic<long> arrived{0}, phase{0};
  long count = 1;
  void wait() {
    if (count == 1) return;
    const long current = phase.load(std::memory_order_acquire);
    if (arrived.fetch_add(1, std::memory_order_acq_rel) == count - 1) {
      arrived.store(0, std::memory_order_relaxed);
      phase.store(current + 1, std::memory_order_release);
      return;
    }
    for (long spins = 0; phase.load(std::memory_order_acquire) == current; ++spins) {
      if (spins < 4000) relax(); else std::this_thread::yield();
    }
  }
};

struct Group {  // buffers shared by the threads of one group of rows
  long row0, rows, chunk, block;     // chunk: steps of cond projection; block: see `run`
  std::vector<float> z, skip, proj;  // (rows, L H), (rows, S), (chunk, rows, L G)
  Barrier barrier;
  std::atomic<bool> solo{false};     // the first thread carries on alone
};

static float sample_one(const Head& head, const float* p, const float* noise, long nstride) {
  if (head.kind == 0) {  // Gaussian: mean + temperature * exp(log_scale) * noise
    float log_scale = std::fmax(p[1], head.log_scale_min);
    float x = p[0] + head.temperature * std::exp(log_scale) * noise[0];
    return std::fmin(std::fmax(x, -1.0f), 1.0f);
  }
  // Mixture: noise holds log(-log(u_k)) for the Gumbel-max choice, then the logistic draw.
  long k = head.n_mixtures, best = 0;
  float best_score = p[0] - noise[0];
  for (long c = 1; c < k; ++c) {
    float score = p[c] - noise[c * nstride];
    if (score > best_score) { best_score = score; best = c; }
  }
  float log_scale = std::fmax(p[2 * k + best], head.log_scale_min);
  float x = p[k + best] + head.temperature * std::exp(log_scale) * noise[k * nstride];
  return std::fmin(std::fmax(x, -1.0f), 1.0f);
}

static void split(long panels, long part, long parts, long* p0, long* p1) {
  *p0 = panels * part / parts;
  *p1 = panels * (part + 1) / parts;
}

enum Section { COND, INPUT, PAST, GATES, TANH, WAIT, RESIDUAL, SKIP, HEAD, SAMPLE, SECTIONS };

struct Clock {  // nanoseconds per section, when asked for (job.timers)
  int64_t* total;
  std::chrono::steady_clock::time_point last = std::chrono::steady_clock::now();
  void lap(Section section) {
    if (!total) return;
    auto now = std::chrono::steady_clock::now();
    total[section] += std::chrono::duration_cast<std::chrono::nanoseconds>(now - last).count();
    last = now;
  }
};

// Thread `part` of `parts` in a group: it owns a slice of the gate units (and their cond
// projections) and of the skip channels, and keeps its own copy of the residual rings, so it
// meets the others once per layer (z complete) and once per step (skip complete).
//
// A layer with dilation d > 1 reads its past taps u(t - d), u(t - 2d), ... only: at every t
// with t % d == 0 it computes their contribution for the next d steps in one (d B) x (K - 1) R
// matmul ("pre"), so those weights are read once per d steps; each step then adds the current
// tap only. Rings hold K d steps, so each block of d past steps is contiguous.
// The head's location (every component's mean) moved by the excitation times its amplitudes.
static void shift_location(const Head& head, const Job& job, float* p, long row, long t) {
  const float* e = job.excitation + row * job.n_excitation * job.length + t;
  float shift = 0.0f;
  for (long k = 0; k < job.n_excitation; ++k) shift += p[job.params_real + k] * e[k * job.length];
  if (head.kind == 0) p[0] += shift;
  else for (long c = 0; c < head.n_mixtures; ++c) p[head.n_mixtures + c] += shift;
}

// The head's parameters from y = x exp(-l) units to x units: every location times exp(l), every
// raw log-scale plus l; the floor applies after, in x units (`sample_one`).
static void scale_to_level(const Head& head, float* p, float level) {
  const float gain = std::exp(level);
  if (head.kind == 0) {
    p[0] *= gain;
    p[1] += level;
    return;
  }
  const long k = head.n_mixtures;
  for (long c = 0; c < k; ++c) {
    p[k + c] *= gain;
    p[2 * k + c] += level;
  }
}

template <typename W>
static void worker(const Net& net, const Head& head, const Job& job, Group& group, long part) {
  const long L = net.n_layers, K = net.kernel, R = net.residual, G = net.gates, H = G / 2;
  const long S = net.skip, P = net.params, KIN = net.input_kernel, C = net.cond;
  const long LG = L * G, LH = L * H, T = job.length;
  long parts = job.threads_per_group;
  const long row0 = group.row0, rows = group.rows;
  const long nchan = head.kind == 0 ? 1 : head.n_mixtures + 1;
  const W* dilated = static_cast<const W*>(net.dilated);
  const W* cond_w = static_cast<const W*>(net.cond_w);
  const W* residual_w = static_cast<const W*>(net.residual_w);
  Clock clock{part == 0 && group.row0 == 0 ? job.timers : nullptr};
  long u0, u1, s0, s1;
  split(H / PW, part, parts, &u0, &u1);
  split(S / PW, part, parts, &s0, &s1);
  std::vector<long> cap(L), ring_at(L + 1, 0), pre_at(L + 1, 0);
  std::vector<bool> lagged(L);
  for (long l = 0; l < L; ++l) {
    const long d = net.dilations[l];
    cap[l] = K * d;
    lagged[l] = K > 1 && d > 1;
    ring_at[l + 1] = ring_at[l] + cap[l] * rows * R;
    pre_at[l + 1] = pre_at[l] + (lagged[l] ? d * rows * G : 0);
  }
  std::vector<float> ring(ring_at[L], 0.0f), pre(pre_at[L]), gates(rows * G);
  std::vector<float> hidden(rows * S), params(rows * P);
  // The stack's inputs: x itself (part 0 writes them straight to job.x), or with a level y,
  // kept apart from the x that part 0 writes.
  const bool scaled = job.log_level != nullptr;
  const bool own_inputs = part != 0 || scaled;
  std::vector<float> own_x(own_inputs ? rows * (T + KIN) : 0, 0.0f);
  float* xs = own_inputs ? own_x.data() : job.x + row0 * (T + KIN);
  float* z = group.z.data();
  float* skip = group.skip.data();
  long panels[2][2] = {{u0, u1}, {H / PW + u0, H / PW + u1}};  // own filter, gate units
  long active = rows, chunk_start = 0;
  // This thread's gate columns of the cond projection, steps t .. the end of the chunk.
  auto project = [&](long t) {
    const long steps = std::min(chunk_start + group.chunk, T) - t;
    for (long r = 0; r < active; ++r) {
      const float* a = job.cond + ((row0 + r) * T + t) * C;
      float* out = group.proj.data() + ((t - chunk_start) * rows + r) * LG;
      for (long l = 0; l < L; ++l)
        for (const auto& range : panels) {
          const long first = l * G / PW;
          gemm<W>(steps, first + range[0], first + range[1], 1, &a, C, C, cond_w, C * PW,
                  nullptr, 0, net.gate_b, 0, out, rows * LG);
        }
    }
  };
  // Barrier waits of the first thread; when they exceed half the wall time for 40 ms (another
  // process holds a core), the group drops to one thread at the next block start, where no
  // state depends on the split.
  using steady = std::chrono::steady_clock;
  double waited = 0.0;
  long slow_windows = 0;
  auto window = steady::now();
  auto sync = [&]() {
    if (parts == 1) return;
    auto start = steady::now();
    group.barrier.wait();
    waited += std::chrono::duration<double>(steady::now() - start).count();
  };
  for (long t = 0; t < T; ++t) {
    while (active > 0 && job.lengths[row0 + active - 1] <= t) --active;
    if (active == 0) break;
    if (parts > 1 && t > 0 && t % group.block == 0) {
      if (part == 0) {
        const double wall = std::chrono::duration<double>(steady::now() - window).count();
        if (job.solo_from >= 0 && t >= job.solo_from) group.solo.store(true);
        if (wall > 20e-3) {  // two slow windows in a row: not just a late start
          slow_windows = waited > 0.5 * wall ? slow_windows + 1 : 0;
          if (slow_windows == 2) group.solo.store(true, std::memory_order_relaxed);
          window = steady::now();
          waited = 0.0;
        }
      }
      group.barrier.wait();
      if (group.solo.load(std::memory_order_relaxed)) {
        if (part != 0) return;
        parts = 1;
        u0 = s0 = 0;
        u1 = H / PW;
        s1 = S / PW;
        panels[0][0] = 0, panels[0][1] = u1, panels[1][0] = u1, panels[1][1] = 2 * u1;
        if (t % group.chunk != 0) project(t);
      }
    }
    if (t % group.chunk == 0) {
      chunk_start = t;
      project(t);
      clock.lap(COND);
    }
    const float* proj = group.proj.data() + (t - chunk_start) * rows * LG;
    float* h0 = ring.data() + (t % cap[0]) * rows * R;
    for (long r = 0; r < active; ++r) {
      const float* xr = xs + r * (T + KIN) + t;
      for (long c = 0; c < R; ++c) {
        float s = net.input_b[c];
        for (long j = 0; j < KIN; ++j) s += net.input_w[j * R + c] * xr[j];
        h0[r * R + c] = s;
      }
    }
    clock.lap(INPUT);
    for (long l = 0; l < L; ++l) {
      const long d = net.dilations[l];
      float* base = ring.data() + ring_at[l];
      const float* taps[MAX_TAPS];
      for (long k = 0; k < K; ++k)
        taps[k] = base + ((t - (K - 1 - k) * d) % cap[l] + cap[l]) % cap[l] * rows * R;
      const W* wl = dilated + l * K * R * G;
      const long pstride = K * R * PW;
      if (lagged[l]) {
        float* pre_l = pre.data() + pre_at[l];
        if (t % d == 0) {  // past taps of the next d steps
          for (const auto& range : panels)
            gemm<W>(d * rows, range[0], range[1], K - 1, taps, R, R, wl, pstride, nullptr, 0,
                    nullptr, 0, pre_l, G);
          clock.lap(PAST);
        }
        for (const auto& range : panels)
          gemm<W>(active, range[0], range[1], 1, &taps[K - 1], R, R, wl + (K - 1) * R * PW,
                  pstride, pre_l + (t % d) * rows * G, G, proj + l * G, LG, gates.data(), G);
      } else {
        for (const auto& range : panels)
          gemm<W>(active, range[0], range[1], K, taps, R, R, wl, pstride, proj + l * G, LG,
                  nullptr, 0, gates.data(), G);
      }
      clock.lap(GATES);
      for (long r = 0; r < active; ++r) {
        float* zr = z + r * LH + l * H;
        const float* gr = gates.data() + r * G;
        for (long i = u0 * PW; i < u1 * PW; i += V) {
          vf a = vtanh(vload(gr + i)), b = vtanh(vload(gr + H + i));
          vstore(zr + i, a + a * b);
        }
      }
      clock.lap(TANH);
      sync();  // z of layer l complete
      clock.lap(WAIT);
      if (l + 1 < L) {
        const float* zl = z + l * H;
        const float* current = taps[K - 1];
        float* next = ring.data() + ring_at[l + 1] + (t % cap[l + 1]) * rows * R;
        gemm<W>(active, 0, R / PW, 1, &zl, LH, H, residual_w + l * H * R, H * PW, current, R,
                net.residual_b + l * R, 0, next, R);
        clock.lap(RESIDUAL);
      }
    }
    const float* zall = z;
    gemm<W>(active, s0, s1, 1, &zall, LH, LH, static_cast<const W*>(net.skip_w), LH * PW, nullptr,
            0, net.skip_b, 0, skip, S);
    for (long r = 0; r < active; ++r)
      for (long i = s0 * PW; i < s1 * PW; ++i) skip[r * S + i] = std::fmax(skip[r * S + i], 0.0f);
    clock.lap(SKIP);
    sync();  // skip complete
    clock.lap(WAIT);
    const float* skip_in = skip;
    gemm<W>(active, 0, S / PW, 1, &skip_in, S, S, static_cast<const W*>(net.hidden_w), S * PW,
            nullptr, 0, net.hidden_b, 0, hidden.data(), S);
    for (long i = 0; i < active * S; ++i) hidden[i] = std::fmax(hidden[i], 0.0f);
    const float* hidden_in = hidden.data();
    gemm<W>(active, 0, P / PW, 1, &hidden_in, S, S, static_cast<const W*>(net.out_w), S * PW,
            nullptr, 0, net.out_b, 0, params.data(), P);
    clock.lap(HEAD);
    for (long r = 0; r < active; ++r) {  // every thread samples the same x; part 0 keeps it
      const long row = row0 + r;
      float* pr = params.data() + r * P;
      if (job.n_excitation) shift_location(head, job, pr, row, t);
      const float level = scaled ? job.log_level[row * T + t] : 0.0f;
      if (scaled) scale_to_level(head, pr, level);
      float x = sample_one(head, pr, job.noise + row * nchan * T + t, T);
      if (scaled) {
        if (part == 0) job.x[row * (T + KIN) + t + KIN] = x;
        x *= std::exp(-level);
      }
      xs[r * (T + KIN) + t + KIN] = x;
      if (part == 0 && job.params_out)
        for (long p = 0; p < job.params_real; ++p)
          job.params_out[(row * job.params_real + p) * T + t] = pr[p];
    }
    clock.lap(SAMPLE);
  }
}

template <typename W>
static void run(const Net& net, const Head& head, const Job& job) {
  const long L = net.n_layers, G = net.gates, LG = L * G;
  // Every layer starts a block of past taps at multiples of the dilations' lcm (the largest,
  // for powers of 2); a huge lcm just means never dropping to one thread.
  long block = 1;
  for (long l = 0; l < L; ++l) block = std::min(std::lcm(block, (long)net.dilations[l]), 1L << 40);
  std::vector<Group> groups(job.groups);
  for (long g = 0; g < job.groups; ++g) {
    Group& group = groups[g];
    group.row0 = job.group_start[g];
    group.rows = job.group_start[g + 1] - group.row0;
    // Cond projections for about chunk_floats per group at once: few enough to stay in cache
    // next to the weights, enough to read the cond weights once for several steps.
    group.chunk = std::max(1L, std::min(1024L, job.chunk_floats / std::max(1L, group.rows * LG)));
    group.block = block;
    group.z.assign(group.rows * L * (G / 2), 0.0f);
    group.skip.assign(group.rows * net.skip, 0.0f);
    group.proj.assign(group.chunk * group.rows * LG, 0.0f);
    group.barrier.count = job.threads_per_group;
  }
  std::vector<std::thread> threads;
  for (long i = 1; i < job.groups * job.threads_per_group; ++i)
    threads.emplace_back(worker<W>, std::cref(net), std::cref(head), std::cref(job),
                         std::ref(groups[i / job.threads_per_group]), i % job.threads_per_group);
  worker<W>(net, head, job, groups[0], 0);
  for (auto& thread : threads) thread.join();
}

extern "C" int wavflow_run(const Net* net, const Head* head, const Job* job) {
  if (net->kernel > MAX_TAPS) return 1;
  if (net->bf16) run<uint16_t>(*net, *head, *job); else run<float>(*net, *head, *job);
  return 0;
}
"""

_INT = ctypes.c_int64
_PTR = ctypes.c_void_p


def _fields(ints: str, pointers: str) -> list[tuple[str, type]]:
    return [(name, _INT) for name in ints.split()] + [(name, _PTR) for name in pointers.split()]


class _Net(ctypes.Structure):
    """Mirrors `struct Net` of the kernel: padded sizes, then weight pointers."""

    _fields_ = _fields(
        "n_layers kernel residual gates skip params input_kernel cond bf16",
        "dilations dilated cond_w gate_b residual_w residual_b skip_w skip_b hidden_w hidden_b"
        " out_w out_b input_w input_b",
    )


class _Head(ctypes.Structure):
    _fields_ = [
        ("kind", _INT),
        ("n_mixtures", _INT),
        ("log_scale_min", ctypes.c_float),
        ("temperature", ctypes.c_float),
    ]


class _Job(ctypes.Structure):
    _fields_ = _fields(
        "length groups threads_per_group params_real chunk_floats solo_from n_excitation",
        "lengths group_start cond noise x params_out excitation log_level timers",
    )


# Test hook: threads sharing a group drop to one at this step (-1: only when they wait too long).
_SOLO_FROM_STEP = -1
_KERNEL: ctypes.CDLL | None = None
_KERNEL_ERROR: str | None = None


def kernel_cache_dir() -> Path:
    """Where the compiled kernel lives: $WAVFLOW_CACHE_DIR, else ~/.cache/wavflow/kernels."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "wavflow"
    return Path(os.environ.get("WAVFLOW_CACHE_DIR", default / "kernels"))


def load_kernel() -> ctypes.CDLL | None:
    """Compile (once per source, compiler flags and CPU) and load the C++ step kernel.

    Returns:
        The loaded library, or None (after one warning) when no compiler is found or the build
        or load fails; the reason is kept in `kernel_error()`.
    """
    global _KERNEL, _KERNEL_ERROR
    if _KERNEL is not None or _KERNEL_ERROR is not None:
        return _KERNEL
    try:
        _KERNEL = _build_and_load()
        _bind(_KERNEL)
    except Exception as error:  # any failure means "use the eager path", never a crash
        _KERNEL, _KERNEL_ERROR = None, f"{type(error).__name__}: {error}".splitlines()[0]
        warnings.warn(
            f"wavflow: C++ generation kernel unavailable ({_KERNEL_ERROR}); using the eager path",
            RuntimeWarning,
            stacklevel=3,
        )
    return _KERNEL


def kernel_error() -> str | None:
    """Why the C++ kernel could not be loaded (None if it loaded or was never tried)."""
    return _KERNEL_ERROR


def _cpu_signature() -> str:
    """Identifies the instruction set, since the kernel is built with -march=native."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _build_and_load() -> ctypes.CDLL:
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler '{compiler}' on PATH")
    flag_sets = (["-march=native"], [])  # the second for compilers/CPUs without -march=native
    common = ["-O3", "-std=c++17", "-shared", "-fPIC", "-pthread", "-fno-math-errno"]
    errors = []
    for arch in flag_sets:
        flags = common + arch
        key = hashlib.sha256(
            "\n".join([_KERNEL_SOURCE, compiler, *flags, _cpu_signature()]).encode()
        ).hexdigest()[:16]
        library = kernel_cache_dir() / f"wavflow_step_{key}.so"
        if not library.exists():
            library.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=library.parent) as build:
                source = Path(build) / "wavflow_step.cpp"
                source.write_text(_KERNEL_SOURCE)
                built = Path(build) / library.name
                result = subprocess.run(
                    [compiler, *flags, str(source), "-o", str(built)],
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                if result.returncode != 0:
                    lines = result.stderr.splitlines()
                    errors.append(next((s for s in lines if "error" in s), "failed").strip())
                    continue
                os.replace(built, library)  # atomic, so concurrent builders never see half a file
        return ctypes.CDLL(str(library))
    raise RuntimeError(f"compilation failed: {errors[-1]}")


def _bind(library: ctypes.CDLL) -> None:
    library.wavflow_run.argtypes = [
        ctypes.POINTER(_Net),
        ctypes.POINTER(_Head),
        ctypes.POINTER(_Job),
    ]
    library.wavflow_run.restype = ctypes.c_int


def _round_to(weight: Tensor, dtype: torch.dtype, compute: torch.dtype) -> Tensor:
    """Cast to the storage dtype and back, so the eager path sees the kernel's rounded weights."""
    return weight.to(dtype).to(compute)


def _pad_to(size: int, multiple: int = PANEL) -> int:
    return -(-size // multiple) * multiple


def _pad(tensor: Tensor, dims: dict[int, int]) -> Tensor:
    """Zero-pad the given dims of `tensor` (at their end) to the given sizes."""
    shape = list(tensor.shape)
    for dim, size in dims.items():
        shape[dim] = size
    padded = tensor.new_zeros(shape)
    padded[tuple(slice(0, n) for n in tensor.shape)] = tensor
    return padded


@dataclass
class _Inputs:
    """One `generate` call's inputs, rows in generation order (see `generate`)."""

    cond: Tensor  # (B, C, T), compute dtype
    noise: Tensor  # (B, N, T), dtype as given
    excitation: Tensor | None  # (B, E, T), compute dtype
    log_level: Tensor | None  # (B, T), compute dtype
    lengths: Tensor  # (B,) long, on the CPU
    temperature: float
    return_params: bool


class IncrementalWaveNet:
    """Cached ("Fast WaveNet") sequential sampling from a causal `WaveNetStack`.

    The stack's weights are read and folded once (see `FoldedStack`); the stack itself is never
    modified, so build a new `IncrementalWaveNet` after training it further.

    Cost per sample: per layer, one (B, K R) x (K R, G) and one (B, G / 2) x (G / 2, R) matmul,
    then one (B, L G / 2) x (L G / 2, S) skip matmul and the two head matmuls; the conditioning
    adds one (B, C) x (C, L G) matmul per sample, batched over time chunks.

    Args:
        stack: a causal stack with one input channel (the teacher's `stack`).
        dtype: storage dtype of the weight matrices: None (the stack's dtype), torch.float32,
            torch.float64 (eager only) or torch.bfloat16 (float32 activations, matrices
            rounded to bfloat16; halves the weight traffic of the C++ kernel).
        backend: "cpp" (the compiled kernel; float32/bfloat16 on CPU), "eager" (PyTorch ops,
            any device), or "auto": "cpp" where it applies and builds, otherwise "eager".
        threads: threads of the C++ kernel (default: torch.get_num_threads() at each call).
            With B items and n threads it runs min(n, B) groups of items in parallel, each
            group split over n // groups threads by gate units (so batch 1 uses them all).
            PyTorch's own intra-op threads are set to 1 for the duration of the call.
    """

    def __init__(
        self,
        stack: WaveNetStack,
        dtype: torch.dtype | None = None,
        backend: str = "auto",
        threads: int | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend '{backend}': use one of {BACKENDS}")
        stack_dtype = next(stack.parameters()).dtype
        self.weight_dtype = dtype or stack_dtype
        if self.weight_dtype not in (torch.float32, torch.float64, torch.bfloat16):
            raise ValueError(f"unsupported dtype {self.weight_dtype}")
        self.compute_dtype = torch.float64 if self.weight_dtype == torch.float64 else torch.float32
        self.backend, self.threads = backend, threads
        with torch.no_grad():
            self.folded = fold_stack(stack)
        n_layers, kernel, *_ = self.folded.sizes
        self.kernel_size = kernel
        self.capacities = [(kernel - 1) * d + 1 for d in self.folded.dilations]
        self._packed: dict[tuple[str, torch.device], dict[str, Tensor]] = {}
        self._timers: Tensor | None = None

    @torch.no_grad()
    def generate(
        self,
        cond: Tensor,
        head: GaussianOutput | LogisticMixtureOutput,
        noise: Tensor,
        temperature: float = 1.0,
        lengths: Tensor | None = None,
        return_params: bool = False,
        excitation: Tensor | None = None,
        log_level: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Sample x_t ~ head(params_t), params_t = stack(x_<t, cond_<=t), for t < lengths[b].

        Args:
            cond: (B, C, T) audio-rate conditioning.
            head: the output distribution (`GaussianOutput` or `LogisticMixtureOutput`; another
                head with the same `sample` interface runs on the eager backend).
            noise: (B, head.noise_channels, T) pre-drawn sampling noise.
            temperature: scale of the sampling noise (0: the mode path).
            lengths: (B,) samples to generate per item (default T); later samples are 0.
            return_params: also return the distribution parameters used at every step.
            excitation: (B, E, T), required when the stack has E outputs beyond the head's P
                (a teacher with pitch): those are amplitudes a_e(t), and the head's location
                moves by sum_e a_e(t) excitation_e(t) (`head.shift_location`).
            log_level: (B, T) l_t of a teacher with the envelope (`teacher.log_level(cond)`):
                the stack reads y_{t-1} = x_{t-1} exp(-l_{t-1}), and its parameters (after the
                excitation's shift) are mapped to x units by `head.scale(params, l_t)` before
                x_t is sampled. None: the stack reads x.

        Returns:
            x (B, 1, T) in cond's dtype; with `return_params`, also params (B, P, T) in the
            compute dtype (0 past each length).
        """
        batch, _, length = cond.shape
        if lengths is None:
            lengths = torch.full((batch,), length, dtype=torch.long)
        lengths = lengths.to("cpu", torch.long)
        if lengths.shape != (batch,) or bool((lengths < 0).any() | (lengths > length).any()):
            raise ValueError(f"lengths must be (B,) = ({batch},) within [0, {length}]")
        n_extra = self.folded.sizes[5] - head.n_params
        if n_extra and (excitation is None or excitation.shape != (batch, n_extra, length)):
            raise ValueError(
                f"the stack predicts {n_extra} excitation amplitudes: pass their "
                f"excitation (B, {n_extra}, T) = teacher.conditioner.excitation(cond)"
            )
        if not n_extra and excitation is not None:
            raise ValueError("excitation given, but the stack predicts no amplitudes for it")
        if log_level is not None and log_level.shape != (batch, length):
            raise ValueError(f"log_level must be (B, T) = ({batch}, {length})")
        use_cpp = self._use_cpp(cond, head)
        threads = self.threads or torch.get_num_threads()
        groups = max(1, min(threads, batch)) if use_cpp else 1
        # Longest first, so each group's active items are a prefix that shrinks as they finish;
        # groups interleave the sorted items to balance their work.
        by_length = torch.argsort(lengths, descending=True, stable=True)
        order = torch.cat([by_length[g::groups] for g in range(groups)])
        group_sizes = [len(by_length[g::groups]) for g in range(groups)]
        device = cond.device if not use_cpp else torch.device("cpu")
        rows = order.to(cond.device)
        # One PyTorch thread around the kernel: an OpenMP worker woken by a parallel op here
        # keeps spinning for tens of ms afterwards, on the core the kernel's second thread needs.
        with _intra_op_threads(1 if use_cpp else None), torch.inference_mode():
            inputs = _Inputs(
                cond=cond.index_select(0, rows).to(device, self.compute_dtype),
                # Noise keeps its dtype, as in `head.sample` on the naive path.
                noise=noise.index_select(0, rows).to(device),
                excitation=None
                if excitation is None
                else excitation.index_select(0, rows).to(device, self.compute_dtype),
                log_level=None
                if log_level is None
                else log_level.index_select(0, rows).to(device, self.compute_dtype),
                lengths=lengths[order],
                temperature=temperature,
                return_params=return_params,
            )
            if use_cpp:
                x, params = self._generate_cpp(inputs, head, group_sizes, threads // groups)
            else:
                x, params = self._generate_eager(inputs, head)
        # Outside inference mode: the results are ordinary tensors that autograd may read later.
        return self._unsort(x, params, order, cond)

    @staticmethod
    def _unsort(
        x: Tensor, params: Tensor | None, order: Tensor, cond: Tensor
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Rows back to the caller's order: x (B, T) -> (B, 1, T) in cond's dtype and device."""
        unsorted = torch.empty_like(x)
        unsorted[order.to(x.device)] = x
        x = unsorted.unsqueeze(1).to(cond.device, cond.dtype)  # (B, T) -> (B, 1, T)
        if params is None:
            return x
        unsorted = torch.empty_like(params)
        unsorted[order.to(params.device)] = params
        return x, unsorted.to(cond.device)

    def profile_kernel(
        self,
        cond: Tensor,
        head: GaussianOutput | LogisticMixtureOutput,
        noise: Tensor,
        temperature: float = 1.0,
    ) -> dict[str, float]:
        """Run `generate` on the C++ kernel with a clock per section of the step.

        The clocks run in the first thread of the first group (~40 ns per reading, a few
        percent of a step). Returns seconds per section, in `KERNEL_SECTIONS` order.
        """
        if not self._use_cpp(cond, head):
            raise RuntimeError("profile_kernel needs the cpp backend")
        self._timers = torch.zeros(len(KERNEL_SECTIONS), dtype=torch.long)
        try:
            self.generate(cond, head, noise, temperature)
            nanoseconds = self._timers.tolist()
        finally:
            self._timers = None
        return {name: ns / 1e9 for name, ns in zip(KERNEL_SECTIONS, nanoseconds)}

    def resolved_backend(self, cond: Tensor, head: object) -> str:
        """The backend `generate` will use for these inputs: "cpp" or "eager"."""
        return "cpp" if self._use_cpp(cond, head) else "eager"

    def _use_cpp(self, cond: Tensor, head: object) -> bool:
        applies = (
            cond.device.type == "cpu"
            and self.compute_dtype == torch.float32
            and isinstance(head, GaussianOutput | LogisticMixtureOutput)
            and self.kernel_size <= 16
        )
        if self.backend == "eager" or (self.backend == "auto" and not applies):
            return False
        if not applies:
            raise ValueError("the cpp backend needs a CPU float32/bfloat16 model and a known head")
        if load_kernel() is None:
            if self.backend == "cpp":
                raise RuntimeError(f"the C++ kernel is unavailable: {kernel_error()}")
            return False
        return True

    def _chunk_steps(self, batch: int, gate_width: int) -> int:
        """Time steps of cond projections computed at once, for COND_CHUNK_FLOATS at most."""
        return max(1, COND_CHUNK_FLOATS // max(1, batch * gate_width))

    @staticmethod
    def _project_cond(cond: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        """cond (B, C, Tc) -> gate inputs of every layer (Tc, B, L G), bias included."""
        batch, channels, steps = cond.shape
        # (B, C, Tc) -> (Tc, B, C) -> (Tc * B, C)
        flat = cond.permute(2, 0, 1).reshape(steps * batch, channels)
        return torch.addmm(bias, flat, weight).view(steps, batch, -1)

    def _eager_weights(self, device: torch.device) -> dict[str, Tensor]:
        """Folded weights for the eager step, biases of the residual and skip matmuls carried by
        a constant-1 input appended to each layer's z'."""
        key = ("eager", device)
        if key not in self._packed:
            folded, compute = self.folded, self.compute_dtype
            n_layers, _, _, gates, skip_channels, _ = folded.sizes
            half = gates // 2

            def matrix(weight: Tensor) -> Tensor:
                return _round_to(weight, self.weight_dtype, compute)

            residual = torch.cat(
                [matrix(folded.residual), folded.residual_bias.to(compute).unsqueeze(1)], 1
            )  # (L, H + 1, R)
            skip_bias = torch.zeros(n_layers, 1, skip_channels, dtype=compute)
            skip_bias[0, 0] = folded.skip_bias
            skip = torch.cat([matrix(folded.skip).view(n_layers, half, -1), skip_bias], 1)
            packed = {
                "input": folded.input_weight.to(compute),
                "input_bias": folded.input_bias.to(compute),
                "dilated": matrix(folded.dilated),
                "cond": matrix(folded.cond),
                "gate_bias": folded.gate_bias.to(compute),
                "residual": residual,
                "skip": skip.view(n_layers * (half + 1), -1),  # (L, H + 1, S) -> (L (H + 1), S)
                "hidden": matrix(folded.hidden),
                "hidden_bias": folded.hidden_bias.to(compute),
                "out": matrix(folded.out),
                "out_bias": folded.out_bias.to(compute),
            }
            self._packed[key] = {name: t.to(device).contiguous() for name, t in packed.items()}
        return self._packed[key]

    def _generate_eager(
        self, inputs: _Inputs, head: GaussianOutput | LogisticMixtureOutput
    ) -> tuple[Tensor, Tensor | None]:
        """The step loop in PyTorch ops; rows sorted by length, descending. -> (B, T), (B, P, T)."""
        w = self._eager_weights(inputs.cond.device)
        n_layers, _, _, gates, _, _ = self.folded.sizes
        batch = inputs.cond.shape[0]
        cond, lengths, temperature = (
            inputs.cond[:, : w["cond"].shape[0]],
            inputs.lengths,
            inputs.temperature,
        )
        steps = int(lengths.max()) if batch else 0
        state = _EagerState(self, w, inputs, head.n_params)
        active_counts = (lengths[None, :] > torch.arange(steps)[:, None]).sum(1).tolist()
        chunk = self._chunk_steps(batch, n_layers * gates)
        for t0 in range(0, steps, chunk):
            t1 = min(steps, t0 + chunk)
            proj = self._project_cond(cond[:, :, t0:t1], w["cond"], w["gate_bias"])
            proj = proj.view(t1 - t0, batch, n_layers, gates)
            # One thread: at these sizes PyTorch's intra-op threads cost more than they save
            # (tanh_ on 256 floats takes 50x longer with 2 threads on a busy machine).
            with _intra_op_threads(1 if cond.device.type == "cpu" else None):
                for t in range(t0, t1):
                    state.step(t, proj[t - t0], active_counts[t], head, temperature)
        return state.result()

    def _cpp_net(self) -> tuple[dict[str, Tensor], _Net]:
        """Weights for the kernel: channels zero-padded to multiples of 32 (padded residual,
        gate and skip channels stay 0: zero weights and biases, tanh(0) = 0), matrices stored as
        (N / 32, K, 32) panels so that each 32-column slice streams contiguously."""
        key = ("cpp", torch.device("cpu"))
        if key not in self._packed:
            self._packed[key] = self._pack_cpp()
        packed = self._packed[key]
        n_layers, kernel, *_ = self.folded.sizes
        net = _Net(
            n_layers=n_layers,
            kernel=kernel,
            residual=packed["input_b"].numel(),
            gates=packed["gate_b"].numel() // n_layers,
            skip=packed["skip_b"].numel(),
            params=packed["out_b"].numel(),
            input_kernel=packed["input_w"].shape[0],
            cond=self.folded.cond.shape[0],
            bf16=int(self.weight_dtype == torch.bfloat16),
            **{name: packed[name].data_ptr() for name, _ in _Net._fields_[9:]},
        )
        return packed, net

    def _pack_cpp(self) -> dict[str, Tensor]:
        folded = self.folded
        n_layers, kernel, residual, gates, skip, n_params = folded.sizes
        half = gates // 2
        r_pad, h_pad, s_pad, p_pad = (_pad_to(n) for n in (residual, half, skip, n_params))

        def gate_columns(t: Tensor) -> Tensor:  # (..., G) -> (..., 2 H_pad)
            filt, gate = t[..., :half], t[..., half:]
            last = t.dim() - 1
            return torch.cat([_pad(filt, {last: h_pad}), _pad(gate, {last: h_pad})], -1)

        def panels(matrix: Tensor) -> Tensor:  # (..., K, N) -> (..., N / 32, K, 32)
            *lead, rows, cols = matrix.shape
            split = matrix.reshape(*lead, rows, cols // PANEL, PANEL)
            return split.transpose(-3, -2).to(self.weight_dtype).contiguous()

        dilated = gate_columns(folded.dilated.view(n_layers, kernel, residual, gates))
        cond = gate_columns(folded.cond.view(-1, n_layers, gates)).flatten(1)
        packed = {
            "dilated": panels(_pad(dilated, {2: r_pad}).flatten(1, 2)),
            "cond_w": panels(cond),
            "residual_w": panels(_pad(folded.residual, {1: h_pad, 2: r_pad})),
            "skip_w": panels(
                _pad(folded.skip.view(n_layers, half, skip), {1: h_pad, 2: s_pad}).flatten(0, 1)
            ),
            "hidden_w": panels(_pad(folded.hidden, {0: s_pad, 1: s_pad})),
            "out_w": panels(_pad(folded.out, {0: s_pad, 1: p_pad})),
        }
        vectors = {
            "gate_b": gate_columns(folded.gate_bias.view(n_layers, gates)).flatten(),
            "residual_b": _pad(folded.residual_bias, {1: r_pad}),
            "skip_b": _pad(folded.skip_bias, {0: s_pad}),
            "hidden_b": _pad(folded.hidden_bias, {0: s_pad}),
            "out_b": _pad(folded.out_bias, {0: p_pad}),
            "input_w": _pad(folded.input_weight, {1: r_pad}),
            "input_b": _pad(folded.input_bias, {0: r_pad}),
        }
        packed |= {name: v.to(torch.float32).contiguous() for name, v in vectors.items()}
        packed["dilations"] = torch.tensor(folded.dilations, dtype=torch.long)
        return packed

    def _generate_cpp(
        self,
        inputs: _Inputs,
        head: GaussianOutput | LogisticMixtureOutput,
        group_sizes: list[int],
        threads_per_group: int,
    ) -> tuple[Tensor, Tensor | None]:
        """The whole step loop in one kernel call. Rows come in groups, each sorted by length,
        descending, and run by `threads_per_group` threads. -> (B, T), (B, P, T)."""
        library = load_kernel()
        assert library is not None
        packed, net = self._cpp_net()
        batch, _, length = inputs.cond.shape
        n_params, noise, temperature = head.n_params, inputs.noise, inputs.temperature
        # (B, C, T) -> (B, T, C)
        cond = inputs.cond[:, : net.cond].transpose(1, 2).contiguous()
        # float32 and contiguous: `generate` made them so
        excitation, log_level = inputs.excitation, inputs.log_level
        if isinstance(head, LogisticMixtureOutput):
            noise = head.noise_terms(noise)  # the kernel takes them as `head.sample` uses them
            head_args = (1, head.n_mixtures)
        else:
            head_args = (0, 1)
        head_struct = _Head(*head_args, head.log_scale_min, temperature)
        noise = noise.to(torch.float32).contiguous()
        x = torch.zeros(batch, length + net.input_kernel)
        params = torch.zeros(batch, n_params, length) if inputs.return_params else None
        starts = torch.tensor([0, *torch.tensor(group_sizes).cumsum(0).tolist()])
        lengths = inputs.lengths  # lengths[order]: contiguous
        job = _Job(
            length=length,
            groups=len(group_sizes),
            threads_per_group=max(1, threads_per_group),
            params_real=n_params,
            chunk_floats=KERNEL_CHUNK_FLOATS,
            solo_from=_SOLO_FROM_STEP,
            n_excitation=0 if excitation is None else excitation.shape[1],
            lengths=lengths.data_ptr(),
            group_start=starts.data_ptr(),
            cond=cond.data_ptr(),
            noise=noise.data_ptr(),
            x=x.data_ptr(),
            params_out=params.data_ptr() if params is not None else None,
            excitation=excitation.data_ptr() if excitation is not None else None,
            log_level=log_level.data_ptr() if log_level is not None else None,
            timers=self._timers.data_ptr() if self._timers is not None else None,
        )
        with torch.profiler.record_function("wavflow::cpp_generate"):
            if library.wavflow_run(ctypes.byref(net), ctypes.byref(head_struct), ctypes.byref(job)):
                raise RuntimeError("the C++ kernel rejected the model")
        return x[:, net.input_kernel :], params


@contextmanager
def _intra_op_threads(count: int | None) -> Iterator[None]:
    """Temporarily set PyTorch's intra-op thread count (None: leave it)."""
    previous = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class _EagerState:
    """Buffers of the eager step: per-layer rings (B, (K - 1) d + 1, R) of u_l, z' of all layers
    (B, L, H + 1) with a constant-1 last column, and the samples so far (B, K_in + T)."""

    def __init__(
        self, model: IncrementalWaveNet, weights: dict[str, Tensor], inputs: _Inputs, n_params: int
    ) -> None:
        n_layers, kernel, residual, gates, skip, n_outputs = model.folded.sizes
        cond, noise = inputs.cond, inputs.noise
        batch, _, length = cond.shape
        self.w, self.return_params, self.n_params = weights, inputs.return_params, n_params
        self.sizes, self.caps = model.folded.sizes, model.capacities
        self.input_kernel = weights["input"].shape[0]

        def zeros(*shape: int) -> Tensor:
            return torch.zeros(shape, device=cond.device, dtype=cond.dtype)

        self.rings = [zeros(batch, cap, residual) for cap in self.caps]
        self.taps, self.gates = zeros(batch, kernel, residual), zeros(batch, gates)
        self.z = zeros(batch, n_layers, gates // 2 + 1)
        self.z[:, :, -1] = 1.0  # the constant input that carries the residual and skip biases
        self.skip, self.hidden = zeros(batch, skip), zeros(batch, skip)
        self.params = zeros(length if self.return_params else 1, batch, n_params)
        self.outputs = zeros(batch, n_outputs)  # params, then amplitudes of the excitation
        self.excitation = None
        if inputs.excitation is not None:
            self.excitation = inputs.excitation.permute(2, 0, 1).contiguous()  # -> (T, B, E)
        # The stack's inputs: x_t at column t + input_kernel, or y_t = x_t exp(-l_t) with a level
        # (then x is kept apart in `samples`).
        self.xs = zeros(batch, length + self.input_kernel)
        self.level = self.samples = None
        if inputs.log_level is not None:
            self.level = inputs.log_level.T.contiguous()  # (B, T) -> (T, B)
            self.samples = zeros(batch, length)
        self.noise = noise.permute(2, 0, 1).unsqueeze(-1).contiguous()  # -> (T, B, N, 1)
        self.tap_index = [
            [
                torch.tensor([(p - (kernel - 1 - k) * d) % cap for k in range(kernel)]).to(
                    cond.device
                )
                for p in range(cap)
            ]
            for d, cap in zip(model.folded.dilations, self.caps)
        ]
        self.active = -1

    def _views(self, active: int) -> None:
        """Views of the first `active` rows, rebuilt only when an item finishes."""
        n_layers, kernel, residual, gates, _, _ = self.sizes
        half = gates // 2
        self.active = active
        self.ring = [r[:active] for r in self.rings]
        self.slots = [[r[:, p] for p in range(r.shape[1])] for r in self.ring]
        self.tap_view = self.taps[:active]
        self.tap_flat = self.tap_view.view(active, kernel * residual)
        self.gate_view = self.gates[:active]
        self.filt, self.gate = self.gate_view[:, :half], self.gate_view[:, half:]
        self.z_in, self.z_out = self.z[:active].unbind(1), self.z[:active, :, :half].unbind(1)
        self.z_flat = self.z[:active].view(active, -1)
        self.skip_view, self.hidden_view = self.skip[:active], self.hidden[:active]
        self.xs_view = self.xs[:active]
        self.samples_view = self.samples[:active] if self.samples is not None else None

    def step(
        self,
        t: int,
        proj: Tensor,
        active: int,
        head: GaussianOutput | LogisticMixtureOutput,
        temperature: float,
    ) -> None:
        """Sample x_t for the first `active` rows; proj (B, L, G) is the cond projection at t."""
        if active != self.active:
            self._views(active)
        w, caps, n_layers = self.w, self.caps, self.sizes[0]
        proj_t = proj[:active].unbind(1)
        inputs = self.xs_view[:, t : t + self.input_kernel]
        torch.addmm(w["input_bias"], inputs, w["input"], out=self.slots[0][t % caps[0]])
        for layer in range(n_layers):
            pos = t % caps[layer]
            torch.index_select(self.ring[layer], 1, self.tap_index[layer][pos], out=self.tap_view)
            torch.addmm(proj_t[layer], self.tap_flat, w["dilated"][layer], out=self.gate_view)
            self.gate_view.tanh_()  # sigmoid(b) = (1 + tanh(b / 2)) / 2, halving folded
            torch.addcmul(self.filt, self.filt, self.gate, out=self.z_out[layer])
            if layer + 1 < n_layers:
                torch.addmm(
                    self.slots[layer][pos],
                    self.z_in[layer],
                    w["residual"][layer],
                    out=self.slots[layer + 1][t % caps[layer + 1]],
                )
        torch.mm(self.z_flat, w["skip"], out=self.skip_view)
        self.skip_view.relu_()
        torch.addmm(w["hidden_bias"], self.skip_view, w["hidden"], out=self.hidden_view)
        self.hidden_view.relu_()
        params = self.params[t if self.return_params else 0, :active]
        if self.excitation is None and self.level is None:
            torch.addmm(w["out_bias"], self.hidden_view, w["out"], out=params)
        else:
            params.copy_(self._mapped(t, active, head))
        x_t = head.sample(params.unsqueeze(-1), self.noise[t, :active], temperature).view(active)
        if self.level is not None:
            self.samples_view[:, t] = x_t
            x_t = x_t * torch.exp(-self.level[t, :active])  # the stack reads y_t
        self.xs_view[:, t + self.input_kernel] = x_t

    def _mapped(self, t: int, active: int, head: GaussianOutput | LogisticMixtureOutput) -> Tensor:
        """Head params (B, P) with the location moved by sum_e amplitude_e(t) excitation_e(t)
        and then, with a level, mapped from y to x units (`head.scale`)."""
        outputs = self.outputs[:active, :, None]  # (B, P + E) -> (B, P + E, 1): (B, channels, T)
        torch.addmm(self.w["out_bias"], self.hidden_view, self.w["out"], out=outputs[..., 0])
        if self.excitation is not None:
            outputs = shift_by_excitation(head, outputs, self.excitation[t, :active, :, None])
        if self.level is not None:
            outputs = head.scale(outputs, self.level[t, :active, None, None])
        return outputs[..., 0]

    def result(self) -> tuple[Tensor, Tensor | None]:
        """Samples (B, T) and, if kept, params (T, B, P) -> (B, P, T)."""
        params = self.params.permute(1, 2, 0) if self.return_params else None
        if self.samples is not None:
            return self.samples, params
        return self.xs[:, self.input_kernel :], params
