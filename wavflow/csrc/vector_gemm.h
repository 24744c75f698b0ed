// Vector primitives and the register-tiled GEMM of the cached WaveNet step (wavenet_step.cpp
// includes this; the loader compiles them together).
//
// Activations are float32; weights float32, bfloat16 (upper 16 bits of a float32, widened
// with a shift) or int8 with one float32 scale per matrix row (w[k, n] = scale[k] * q[k, n]:
// the scale multiplies the activation that row reads, so the panels stay plain integers). GCC/Clang vector extensions keep it portable: on AVX-512 a `vf` is one zmm
// register, elsewhere the compiler splits it.
#pragma once
#include <cstdint>
#include <cstring>

typedef float vf __attribute__((vector_size(64)));
typedef uint16_t vh __attribute__((vector_size(32)));
typedef uint32_t vu __attribute__((vector_size(64)));
typedef int32_t vi __attribute__((vector_size(64)));
static const long V = 16;        // floats per vector
static const long PW = 32;       // panel width: weights are stored (N / PW, K, PW)
static const int MAX_TAPS = 16;
static const long MAX_ROWS = 12; // rows per register tile (24 accumulators)

static inline vf vload(const float* p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
static inline void vstore(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
static inline vf wload(const float* p) { return vload(p); }
#ifdef __AVX512F__
#include <immintrin.h>
static inline vf wload(const uint16_t* p) {  // bfloat16 -> float32: widen, shift into the top
  __m512i u = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16);
  return (vf)_mm512_castsi512_ps(u);
}
static inline vf wload(const int8_t* p) {  // int8 -> float32: sign-extend, convert
  return (vf)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p)));
}
static inline vf splat(float s) { return (vf)_mm512_set1_ps(s); }
static inline void relax() { _mm_pause(); }
#else
static inline vf wload(const uint16_t* p) {
  vh h; std::memcpy(&h, p, sizeof h);
  vu u = __builtin_convertvector(h, vu) << 16;
  vf f; std::memcpy(&f, &u, sizeof f); return f;
}
static inline vf wload(const int8_t* p) {
  typedef int8_t vb __attribute__((vector_size(16)));
  vb b; std::memcpy(&b, p, sizeof b);
  return __builtin_convertvector(__builtin_convertvector(b, vi), vf);
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

// The activation a row k of the weights reads, times that row's scale (int8 weights only).
template <typename W>
static inline float scaled(float a, const float* row_scale, long k) {
  if constexpr (sizeof(W) == 1) return a * row_scale[k];
  else return a;
}

// One panel: out[r, :PW] = init[r] + add[r] + sum_j sum_k a[j][r * lda + k] w[j * kb + k, :PW]
// (a bias is an `add` with row stride 0). `rs`: the int8 weights' row scales, rows j * kb + k.
// KU independent accumulators per output keep the FMA pipes busy when there are few rows.
template <int MR, int KU, typename W>
static inline void tile(int nblk, const float* const* a, long lda, long kb, const W* w,
                        const float* rs, const float* init, long ldi, const float* add, long ldd,
                        float* out, long ldo) {
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
    const float* sj = rs ? rs + j * kb : nullptr;
    long k = 0;
    for (; k + KU <= kb; k += KU)
      for (int u = 0; u < KU; ++u) {
        vf b0 = wload(wj + (k + u) * PW), b1 = wload(wj + (k + u) * PW + V);
        for (int r = 0; r < MR; ++r) {
          vf s = splat(scaled<W>(aj[r * lda + k + u], sj, k + u));
          acc[u][r][0] += s * b0;
          acc[u][r][1] += s * b1;
        }
      }
    for (; k < kb; ++k) {
      vf b0 = wload(wj + k * PW), b1 = wload(wj + k * PW + V);
      for (int r = 0; r < MR; ++r) {
        vf s = splat(scaled<W>(aj[r * lda + k], sj, k));
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
                            const float* rs, const float* init, long ldi, const float* add,
                            long ldd, float* out, long ldo) {
  tile<MR, MR == 1 ? 4 : (MR == 2 ? 2 : 1), W>(nblk, a, lda, kb, w, rs, init, ldi, add, ldd, out,
                                               ldo);
}

// out (m, panels p0..p1) = init + add + sum over nblk blocks of a_j (m, kb) times nblk * kb
// rows of each panel of w (panel p at w + p * pstride), int8 rows scaled by rs (else null).
// Panels outer, so each stays in L1 for all row tiles.
template <typename W>
static void gemm(long m, long p0, long p1, int nblk, const float* const* a, long lda, long kb,
                 const W* w, long pstride, const float* rs, const float* init, long ldi,
                 const float* add, long ldd, float* out, long ldo) {
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
  case R: tile_for<R, W>(nblk, ar, lda, kb, wp, rs, in, ldi, ad, ldd, o, ldo); break;
        WAVFLOW_CASE(1) WAVFLOW_CASE(2) WAVFLOW_CASE(3) WAVFLOW_CASE(4)
        WAVFLOW_CASE(5) WAVFLOW_CASE(6) WAVFLOW_CASE(7) WAVFLOW_CASE(8)
        WAVFLOW_CASE(9) WAVFLOW_CASE(10) WAVFLOW_CASE(11) WAVFLOW_CASE(12)
#undef WAVFLOW_CASE
      }
      r0 += mr;
    }
  }
}
