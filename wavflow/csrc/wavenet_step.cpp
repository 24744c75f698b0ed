// The cached WaveNet step loop (wavflow.generation.kernel loads it with ctypes).
//
// The vector primitives and the GEMM are in vector_gemm.h.
//
// The structs below are mirrored field by field by ctypes in wavflow/generation/kernel.py;
// `wavflow_abi` reports WAVFLOW_ABI_VERSION and their sizes so that the loader refuses a
// library whose layout differs. Bump the version with any change to Net, Head or Job.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <thread>
#include <vector>

#include "vector_gemm.h"

static const int64_t WAVFLOW_ABI_VERSION = 3;

struct Net {
  int64_t n_layers, kernel, residual, gates, skip, params, input_kernel, cond;
  int64_t weight_kind;       // 0 float32, 1 bfloat16, 2 int8 with the row scales below
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
  // int8 only: one scale per row of each matrix above (null otherwise).
  const float *dilated_s, *cond_s, *residual_s, *skip_s, *hidden_s, *out_s;  // (L K R), (C),
  // (L H), (L H), (S), (S)
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
  // Incremental state (`GenerationState`): step 0 of this call is step `start` of the
  // utterance. Rings are (B, sum_l C_l, R) with C_l = (K - 1) d_l + 1, u_l(s) at slot s % C_l.
  int64_t start;
  const float* rings_in;       // state at `start`, or null: zeros (a fresh utterance)
  float* rings_out;            // state at start + lengths[b] for each row, or null
  const float* inputs_in;      // (B, K_in): the stack's last K_in inputs before `start`
  float* inputs_out;           // (B, K_in): the same before start + lengths[b]
};

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

static inline long wrap(long value, long modulus) { return (value % modulus + modulus) % modulus; }

// Copies the (K - 1) d past steps of each layer between the kernel's rings (time slot-major,
// K d slots) and the state's (row-major, (K - 1) d + 1 slots), for rows [0, rows) of a group.
static void exchange_state(const Net& net, const Job& job, long row0, long rows,
                           const std::vector<long>& ring_at, std::vector<float>& ring,
                           bool load) {
  const long L = net.n_layers, K = net.kernel, R = net.residual;
  long state_floats = 0;
  for (long l = 0; l < L; ++l) state_floats += ((K - 1) * net.dilations[l] + 1) * R;
  for (long r = 0; r < rows; ++r) {
    const long row = row0 + r;
    const long end = job.start + (load ? 0 : job.lengths[row]);
    long state_at = row * state_floats;
    for (long l = 0; l < L; ++l) {
      const long d = net.dilations[l], cap = K * d, state_cap = (K - 1) * d + 1;
      for (long s = end - (K - 1) * d; s < end; ++s) {
        float* kernel_slot = ring.data() + ring_at[l] + (wrap(s, cap) * rows + r) * R;
        const long state_slot = state_at + wrap(s, state_cap) * R;
        if (load) std::memcpy(kernel_slot, job.rings_in + state_slot, R * sizeof(float));
        else std::memcpy(job.rings_out + state_slot, kernel_slot, R * sizeof(float));
      }
      state_at += state_cap * R;
    }
  }
}

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

// p + n, or null for a null p (the row scales of float and bfloat16 weights).
static inline const float* offset(const float* p, long n) { return p ? p + n : nullptr; }

// Thread `part` of `parts` in a group: it owns a slice of the gate units (and their cond
// projections) and of the skip channels, and keeps its own copy of the residual rings, so it
// meets the others once per layer (z complete) and once per step (skip complete).
//
// A layer with dilation d > 1 reads its past taps u(t - d), u(t - 2d), ... only: at every t
// with t % d == 0 it computes their contribution for the next d steps in one (d B) x (K - 1) R
// matmul ("pre"), so those weights are read once per d steps; each step then adds the current
// tap only. Rings hold K d steps, so each block of d past steps is contiguous.
//
// Ring slots are indexed by the utterance's step `start + t`, so a call that continues a state
// reads the past it left; the first step of a call that starts inside a block of d computes
// that whole block's past taps (all of them precede `start`).
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
  for (long r = 0; r < rows; ++r)
    std::memcpy(xs + r * (T + KIN), job.inputs_in + (row0 + r) * KIN, KIN * sizeof(float));
  if (job.rings_in) exchange_state(net, job, row0, rows, ring_at, ring, true);
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
                  net.cond_s, nullptr, 0, net.gate_b, 0, out, rows * LG);
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
    const long step = job.start + t;  // the utterance's step: it indexes the rings
    if (parts > 1 && t > 0 && step % group.block == 0) {
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
    float* h0 = ring.data() + (step % cap[0]) * rows * R;
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
      for (long k = 0; k < K; ++k) taps[k] = base + wrap(step - (K - 1 - k) * d, cap[l]) * rows * R;
      const W* wl = dilated + l * K * R * G;
      const float* sl = offset(net.dilated_s, l * K * R);
      const long pstride = K * R * PW;
      if (lagged[l]) {
        float* pre_l = pre.data() + pre_at[l];
        const long phase = step % d;
        if (phase == 0 || t == 0) {  // past taps of the d steps of this block
          const float* past[MAX_TAPS];
          for (long k = 0; k + 1 < K; ++k)
            past[k] = base + wrap(step - phase - (K - 1 - k) * d, cap[l]) * rows * R;
          for (const auto& range : panels)
            gemm<W>(d * rows, range[0], range[1], K - 1, past, R, R, wl, pstride, sl, nullptr,
                    0, nullptr, 0, pre_l, G);
          clock.lap(PAST);
        }
        for (const auto& range : panels)
          gemm<W>(active, range[0], range[1], 1, &taps[K - 1], R, R, wl + (K - 1) * R * PW,
                  pstride, offset(sl, (K - 1) * R), pre_l + phase * rows * G, G, proj + l * G,
                  LG, gates.data(), G);
      } else {
        for (const auto& range : panels)
          gemm<W>(active, range[0], range[1], K, taps, R, R, wl, pstride, sl, proj + l * G,
                  LG, nullptr, 0, gates.data(), G);
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
        float* next = ring.data() + ring_at[l + 1] + (step % cap[l + 1]) * rows * R;
        gemm<W>(active, 0, R / PW, 1, &zl, LH, H, residual_w + l * H * R, H * PW,
                offset(net.residual_s, l * H), current, R, net.residual_b + l * R, 0, next, R);
        clock.lap(RESIDUAL);
      }
    }
    const float* zall = z;
    gemm<W>(active, s0, s1, 1, &zall, LH, LH, static_cast<const W*>(net.skip_w), LH * PW,
            net.skip_s, nullptr, 0, net.skip_b, 0, skip, S);
    for (long r = 0; r < active; ++r)
      for (long i = s0 * PW; i < s1 * PW; ++i) skip[r * S + i] = std::fmax(skip[r * S + i], 0.0f);
    clock.lap(SKIP);
    sync();  // skip complete
    clock.lap(WAIT);
    const float* skip_in = skip;
    gemm<W>(active, 0, S / PW, 1, &skip_in, S, S, static_cast<const W*>(net.hidden_w), S * PW,
            net.hidden_s, nullptr, 0, net.hidden_b, 0, hidden.data(), S);
    for (long i = 0; i < active * S; ++i) hidden[i] = std::fmax(hidden[i], 0.0f);
    const float* hidden_in = hidden.data();
    gemm<W>(active, 0, P / PW, 1, &hidden_in, S, S, static_cast<const W*>(net.out_w), S * PW,
            net.out_s, nullptr, 0, net.out_b, 0, params.data(), P);
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
  if (part != 0) return;
  if (job.rings_out) exchange_state(net, job, row0, rows, ring_at, ring, false);
  for (long r = 0; r < rows; ++r)
    std::memcpy(job.inputs_out + (row0 + r) * KIN, xs + r * (T + KIN) + job.lengths[row0 + r],
                KIN * sizeof(float));
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

// Version and struct sizes, checked by the loader: (version, sizeof Net, Head, Job).
extern "C" void wavflow_abi(int64_t* out) {
  out[0] = WAVFLOW_ABI_VERSION;
  out[1] = sizeof(Net);
  out[2] = sizeof(Head);
  out[3] = sizeof(Job);
}

extern "C" int wavflow_run(const Net* net, const Head* head, const Job* job) {
  if (net->kernel > MAX_TAPS) return 1;
  switch (net->weight_kind) {
    case 0: run<float>(*net, *head, *job); break;
    case 1: run<uint16_t>(*net, *head, *job); break;
    case 2: run<int8_t>(*net, *head, *job); break;
    default: return 2;
  }
  return 0;
}
