// rsnjax's fused reservoir step for XLA's CPU backend (called through jax.ffi).
//
// The sampler's loop form of the reservoir's Euler-Maruyama step (rsnjax/sde.py, _ReservoirStep):
//
//     x_t = W_out u_t + (W_out G) c_t,
//     u_{t+1} = (1 - a) u_t + a * phi(W_in x_t + I),   c_{t+1} = (1 - a) c_t + sqrt(h) xi_t,
//
// with xi_t the step's standard normals, drawn here exactly as rsnjax.sampling.step_noise draws
// them (same Threefry bits; erf^-1 within a few ulps). One call runs all the steps of a segment.
// Groups of C chains are copied into an aligned scratch (states padded with zeros to whole
// vectors), kept hot in L1/L2 over the steps, and get ONE pass per step: the update of u and the
// next readout W_out u_{t+1} in the same loop, the weights loaded once for the group. The call
// also reports, per chain, the first step whose readout x_t is not finite (-1 if none).
//
// phi: tanh (the rational approximation of Eigen's / XLA's fast float tanh, simd.h, with a folded
// into the numerator) and relu (one max, with a folded into W_in and I). Written with GCC/Clang
// vector extensions (simd.h), so that it vectorises without -ffast-math (which would break the
// finiteness test).
//
// Build: setup.py (an optional extension; the package works without it, on XLA's loop). The
// XLA FFI headers are vendored in include/ (Apache-2.0, see NOTICE).

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include "simd.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using namespace rsnjax_simd;

// Horizontal sums as a tree of halvings (a serial sum would add a long latency chain per step).
typedef float v4 __attribute__((vector_size(4 * sizeof(float))));
inline float hsum(v4 v) {
  const auto b = __builtin_shufflevector(v, v, 0, 1) + __builtin_shufflevector(v, v, 2, 3);
  return b[0] + b[1];
}
#if defined(__AVX512F__) || defined(__AVX__)
typedef float v8 __attribute__((vector_size(8 * sizeof(float))));
inline float hsum(v8 v) {
  return hsum(__builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7));
}
#endif
#if defined(__AVX512F__)
inline float hsum(vf v) {
  return hsum(__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
              __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15));
}
#endif

// ---- the noise: Threefry-2x32 and √2·erf⁻¹, as rsnjax.sampling.step_noise -------------------
//
// Chain c's noise at global step t, component j, is √2·erf⁻¹(2u − 1) with u uniform in [0, 1)
// from the first word of Threefry-2x32 of the counter (t, j) under the chain's key words. The
// hash and the uniform are bit-exact; erf⁻¹ is Giles' float32 approximation (the one XLA uses)
// with its log1p from a Cephes-style logf, so a normal differs from XLA's by float rounding
// (a few ulps; tests/test_kernel.py measures it). Vectorised over kWidth consecutive steps.

typedef uint32_t vu __attribute__((vector_size(kWidth * sizeof(uint32_t))));
typedef int32_t vi __attribute__((vector_size(kWidth * sizeof(int32_t))));

template <int R>
inline vu rotl(vu x) {
  return (x << R) | (x >> (32 - R));
}

// Threefry-2x32 with 20 rounds (jax's threefry_2x32); returns the first output word.
inline vu threefry_first(uint32_t k0, uint32_t k1, vu x0, vu x1) {
  const uint32_t ks[3] = {k0, k1, k0 ^ k1 ^ 0x1BD11BDAu};
  x0 += k0;
  x1 += k1;
#define RSNJAX_MIX(R) \
  x0 += x1;           \
  x1 = rotl<R>(x1);   \
  x1 ^= x0;
  for (int i = 0; i < 5; ++i) {
    if (i % 2 == 0) {
      RSNJAX_MIX(13) RSNJAX_MIX(15) RSNJAX_MIX(26) RSNJAX_MIX(6)
    } else {
      RSNJAX_MIX(17) RSNJAX_MIX(29) RSNJAX_MIX(16) RSNJAX_MIX(24)
    }
    x0 += ks[(i + 1) % 3];
    x1 += ks[(i + 2) % 3] + static_cast<uint32_t>(i + 1);
  }
#undef RSNJAX_MIX
  return x0;
}

inline vf vsqrt(vf x) {
#if defined(__AVX512F__)
  return (vf)_mm512_sqrt_ps((__m512)x);
#elif defined(__AVX__)
  return (vf)_mm256_sqrt_ps((__m256)x);
#elif defined(__SSE__)
  return (vf)_mm_sqrt_ps((__m128)x);
#else
  vf r;
  for (int k = 0; k < kWidth; ++k) r[k] = std::sqrt(x[k]);
  return r;
#endif
}

// log(x) for normal positive x (Cephes' logf: x = m 2^e, m in [√½, √2), a degree-9 polynomial).
inline vf vlog(vf x) {
  const vi bits = (vi)x;
  vi e = ((bits >> 23) & 0xff) - 126;
  vf m = (vf)((bits & 0x007fffff) | 0x3f000000);  // in [0.5, 1)
  const vi small = m < 0.707106781186547524f;
  e = small ? e - 1 : e;
  m = (small ? m + m : m) - 1.0f;
  const vf z = m * m;
  vf y = m * 7.0376836292e-2f - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  const vf ef = __builtin_convertvector(e, vf);
  y = y * m * z + ef * -2.12194440e-4f;
  y = y - 0.5f * z;
  return (m + y) + ef * 0.693359375f;
}

// log1p(y) for y in (−1, 0]: log(1 + y)·y/((1 + y) − 1), which is accurate where 1 + y rounds.
inline vf vlog1p(vf y) {
  const vf u = 1.0f + y;
  const vf d = u - 1.0f;
  return d == 0.0f ? y : vlog(u) * (y / d);
}

// √2·erf⁻¹(2u − 1) of the uniform given by hash bits (jax.random.normal's transform).
inline vf normal_from_bits(vu bits) {
  const vf unit = (vf)((bits >> 9) | 0x3F800000u) - 1.0f;
  vf v = unit * 2.0f - 1.0f;
  const float lo = -0.99999994f;  // nextafter(−1, 1)
  v = v < lo ? vf{} + lo : v;
  const vf w = -vlog1p(-(v * v));
  const vi lt = w < 5.0f;
  const vf w1 = w - 2.5f, w2 = vsqrt(w) - 3.0f;
  vf p1 = w1 * 2.81022636e-08f + 3.43273939e-07f;
  p1 = p1 * w1 + -3.5233877e-06f;
  p1 = p1 * w1 + -4.39150654e-06f;
  p1 = p1 * w1 + 0.00021858087f;
  p1 = p1 * w1 + -0.00125372503f;
  p1 = p1 * w1 + -0.00417768164f;
  p1 = p1 * w1 + 0.246640727f;
  p1 = p1 * w1 + 1.50140941f;
  vf p2 = w2 * -0.000200214257f + 0.000100950558f;
  p2 = p2 * w2 + 0.00134934322f;
  p2 = p2 * w2 + -0.00367342844f;
  p2 = p2 * w2 + 0.00573950773f;
  p2 = p2 * w2 + -0.0076224613f;
  p2 = p2 * w2 + 0.00943887047f;
  p2 = p2 * w2 + 1.00167406f;
  p2 = p2 * w2 + 2.83297682f;
  return 1.41421356237309515f * ((lt ? p1 : p2) * v);
}

inline vu lane_index() {
  vu r;
  for (int k = 0; k < kWidth; ++k) r[k] = static_cast<uint32_t>(k);
  return r;
}

// out[s] = the normal of steps first + s, s < count (rounded up to kWidth), component j.
inline void normals(uint32_t k0, uint32_t k1, uint32_t first, uint32_t j, int64_t count, float* out) {
  const vu lanes = lane_index(), comp = vu{} + j;
  for (int64_t s = 0; s < count; s += kWidth)
    store(out + s, normal_from_bits(threefry_first(k0, k1, lanes + (first + static_cast<uint32_t>(s)), comp)));
}

// ---- the reservoir step ------------------------------------------------------------------------

// a·φ(z). tanh: a folded into P's coefficients (a x P(x²) / Q(x²)), an ulp from a·tanh(z). relu:
// a folded into the input weights and bias instead (a·relu(z) = relu(a z) for a > 0), so φ is relu.
template <int ACT>
struct ScaledPhi {
  float pa[7];  // a * P's coefficients, highest first (tanh)
  explicit ScaledPhi(float a) {
    const float p[7] = {-2.76076847742355e-16f, 2.00018790482477e-13f, -8.60467152213735e-11f,
                        5.12229709037114e-08f,  1.48572235717979e-05f, 6.37261928875436e-04f,
                        4.89352455891786e-03f};
    for (int k = 0; k < 7; ++k) pa[k] = a * p[k];
  }
  inline vf operator()(vf x) const {
    if constexpr (ACT == kRelu) {
      return relu(x);
    } else {
      const float clamp = 7.90531110763549805f;
      x = clamp < x ? vf{} + clamp : x;
      x = -clamp > x ? vf{} - clamp : x;
      const vf x2 = x * x;
      vf p = x2 * pa[0] + pa[1];
      for (int k = 2; k < 7; ++k) p = p * x2 + pa[k];
      p = p * x;
      vf q = x2 * 1.19825839466702e-06f + 1.18534705686654e-04f;
      q = q * x2 + 2.26843463243900e-03f;
      q = q * x2 + 4.89352518554385e-03f;
      return p / q;
    }
  }
};

// What one call shares: the weights padded to np (a multiple of kWidth) with zeros and aligned
// (relu: W_in and I times a), the noise map, and the step's constants.
struct Shared {
  const float* wo;    // (D, np)
  const float* wi;    // (D, np)
  const float* bias;  // (np)
  const float* m;     // W_out G (D, D)
  const uint32_t* keys;  // (chains, 2)
  float a, root_h;
  uint32_t start;
  int64_t n, np, steps;
};

// Neurons [i, i + kWidth) of C chains, one step: u <- (1 − a) u + a φ(in_rows^T x + I), and the
// next readout's partial sums acc[c][j] += W_out[j, i] u. The weights are loaded once for the C
// chains. MASKED: the last vector, whose lanes past n stay exactly 0 (also when x is not finite).
template <int D, int C, int ACT, bool MASKED>
inline void update(float* u, const vf (&x)[C][D], vf (&acc)[C][D], const Shared& s, const ScaledPhi<ACT>& phi,
                   float b, int64_t i, vi keep) {
  vf w_in[D], w_out[D];
  for (int j = 0; j < D; ++j) {
    w_in[j] = *reinterpret_cast<const vf*>(s.wi + j * s.np + i);
    w_out[j] = *reinterpret_cast<const vf*>(s.wo + j * s.np + i);
  }
  const vf bi = *reinterpret_cast<const vf*>(s.bias + i);
  for (int c = 0; c < C; ++c) {
    vf* uc = reinterpret_cast<vf*>(u + c * s.np + i);
    vf z = x[c][0] * w_in[0] + bi;  // (x0 r0 + I) + x1 r1 + ...: d multiply-adds
    for (int j = 1; j < D; ++j) z += x[c][j] * w_in[j];
    vf un = b * *uc + phi(z);
    if constexpr (MASKED) un = keep ? un : vf{};
    *uc = un;
    for (int j = 0; j < D; ++j) acc[c][j] += w_out[j] * un;
  }
}

// One step's pass over the C chains' padded states u (C, np): the update and the next readout y.
template <int D, int C, int ACT>
inline void pass(float* u, const vf (&x)[C][D], float (&y)[C][D], const Shared& s, const ScaledPhi<ACT>& phi,
                 float b, vi keep) {
  vf acc[C][D];
  for (int c = 0; c < C; ++c)
    for (int j = 0; j < D; ++j) acc[c][j] = vf{};
  const int64_t last = s.np - kWidth;
  for (int64_t i = 0; i < last; i += kWidth) update<D, C, ACT, false>(u, x, acc, s, phi, b, i, keep);
  update<D, C, ACT, true>(u, x, acc, s, phi, b, last, keep);
  for (int c = 0; c < C; ++c)
    for (int j = 0; j < D; ++j) y[c][j] = hsum(acc[c][j]);
}

constexpr int64_t kNoiseSteps = 64;  // steps of noise drawn at a time (a multiple of kWidth)

// Chains [c0, c0 + C) over s.steps steps, in the scratch `work` (C·np floats, aligned): u (chains, n)
// and the noise state c (chains, D) in place, bad[c] = the first step whose readout is not finite.
template <int D, int C, int ACT>
void run_chains(float* u, float* cstate, int32_t* bad, int64_t c0, const Shared& s, float* work) {
  const float b = 1.0f - s.a;
  const ScaledPhi<ACT> phi(s.a);
  vi keep;
  for (int k = 0; k < kWidth; ++k) keep[k] = (s.np - kWidth + k) < s.n ? -1 : 0;
  for (int c = 0; c < C; ++c) {
    std::memcpy(work + c * s.np, u + (c0 + c) * s.n, sizeof(float) * s.n);
    std::memset(work + c * s.np + s.n, 0, sizeof(float) * (s.np - s.n));
  }
  // The readout of the incoming state, summed exactly as the step's pass sums the next one, so
  // that the result does not depend on where a run is cut into calls (segments reproduce the
  // one-program run bit for bit).
  float y[C][D];
  {
    vf acc[C][D];
    for (int c = 0; c < C; ++c)
      for (int j = 0; j < D; ++j) acc[c][j] = vf{};
    for (int64_t i = 0; i < s.np; i += kWidth)
      for (int c = 0; c < C; ++c) {
        const vf uc = *reinterpret_cast<const vf*>(work + c * s.np + i);
        for (int j = 0; j < D; ++j) acc[c][j] += *reinterpret_cast<const vf*>(s.wo + j * s.np + i) * uc;
      }
    for (int c = 0; c < C; ++c)
      for (int j = 0; j < D; ++j) y[c][j] = hsum(acc[c][j]);
  }
  float cs[C][D];
  int32_t first_bad[C];
  for (int c = 0; c < C; ++c) {
    first_bad[c] = -1;
    for (int j = 0; j < D; ++j) cs[c][j] = cstate[(c0 + c) * D + j];
  }
  alignas(64) float xi[C][D][kNoiseSteps];
  for (int64_t t0 = 0; t0 < s.steps; t0 += kNoiseSteps) {
    const int64_t count = std::min(kNoiseSteps, s.steps - t0);
    for (int c = 0; c < C; ++c)
      for (int j = 0; j < D; ++j)
        normals(s.keys[2 * (c0 + c)], s.keys[2 * (c0 + c) + 1], s.start + static_cast<uint32_t>(t0),
                static_cast<uint32_t>(j), count, xi[c][j]);
    for (int64_t k = 0; k < count; ++k) {
      vf xv[C][D];
      for (int c = 0; c < C; ++c) {
        // x = W_out u + (W_out G) c, then c <- (1 − a) c + √h ξ (XLA's loop, sde._ReservoirStep)
        float x[D];
        bool finite = true;
        for (int j = 0; j < D; ++j) {
          float xc = 0.0f;
          for (int l = 0; l < D; ++l) xc += cs[c][l] * s.m[j * D + l];
          x[j] = y[c][j] + xc;
          finite = finite && std::isfinite(x[j]);
        }
        if (!finite && first_bad[c] < 0) first_bad[c] = static_cast<int32_t>(t0 + k);
        for (int j = 0; j < D; ++j) {
          cs[c][j] = b * cs[c][j] + s.root_h * xi[c][j][k];
          xv[c][j] = vf{} + x[j];
        }
      }
      pass<D, C, ACT>(work, xv, y, s, phi, b, keep);
    }
  }
  for (int c = 0; c < C; ++c) {
    std::memcpy(u + (c0 + c) * s.n, work + c * s.np, sizeof(float) * s.n);
    for (int j = 0; j < D; ++j) cstate[(c0 + c) * D + j] = cs[c][j];
    bad[c0 + c] = first_bad[c];
  }
}

// chains [lo, hi): C at a time (4 for d <= 2, 2 for d <= 4: the weights are loaded once for C
// chains, and C independent chains are in flight), the rest one by one. Each chain's arithmetic
// is the same in any group, so the results do not depend on the grouping (bits).
template <int D, int ACT>
void run_range(float* u, float* cstate, int32_t* bad, const Shared& s, int64_t lo, int64_t hi) {
  constexpr int C = D <= 2 ? 4 : D <= 4 ? 2 : 1;
  float* work = static_cast<float*>(std::aligned_alloc(64, sizeof(float) * C * s.np));
  int64_t c = lo;
  for (; c + C <= hi; c += C) run_chains<D, C, ACT>(u, cstate, bad, c, s, work);
  for (; c < hi; ++c) run_chains<D, 1, ACT>(u, cstate, bad, c, s, work);
  std::free(work);
}

using ChainFn = void (*)(float*, float*, int32_t*, const Shared&, int64_t, int64_t);

template <int ACT>
ChainFn pick_d(int64_t d) {
  switch (d) {
    case 1: return run_range<1, ACT>;
    case 2: return run_range<2, ACT>;
    case 3: return run_range<3, ACT>;
    case 4: return run_range<4, ACT>;
    case 5: return run_range<5, ACT>;
    case 6: return run_range<6, ACT>;
    case 7: return run_range<7, ACT>;
    case 8: return run_range<8, ACT>;
    default: return nullptr;
  }
}

template <class F>
void parallel_for(int64_t count, int64_t threads, F&& body) {
  threads = std::max<int64_t>(1, std::min(threads, count));
  if (threads == 1) {
    body(0, count);
    return;
  }
  std::vector<std::thread> pool;
  const int64_t per = (count + threads - 1) / threads;
  for (int64_t k = 1; k < threads; ++k) {
    const int64_t lo = k * per, hi = std::min(count, lo + per);
    if (lo < hi) pool.emplace_back([&body, lo, hi] { body(lo, hi); });
  }
  body(0, std::min(count, per));
  for (auto& th : pool) th.join();
}

// The chains of a call in pieces of `grain`, taken by `threads` threads as they come free (a
// thread slowed by another process on its core does not hold up the call).
template <class F>
void parallel_for_dynamic(int64_t count, int64_t grain, int64_t threads, F&& body) {
  const int64_t pieces = (count + grain - 1) / grain;
  threads = std::max<int64_t>(1, std::min(threads, pieces));
  std::atomic<int64_t> next{0};
  auto worker = [&] {
    for (int64_t k; (k = next.fetch_add(1)) < pieces;) body(k * grain, std::min(count, (k + 1) * grain));
  };
  std::vector<std::thread> pool;
  for (int64_t k = 1; k < threads; ++k) pool.emplace_back(worker);
  worker();
  for (auto& th : pool) th.join();
}

struct AlignedFloats {
  float* p;
  explicit AlignedFloats(int64_t count) : p(static_cast<float*>(std::aligned_alloc(64, sizeof(float) * count))) {
    std::memset(p, 0, sizeof(float) * count);
  }
  ~AlignedFloats() { std::free(p); }
};

ffi::Error ReservoirStepsImpl(ffi::Buffer<ffi::F32> u_in, ffi::Buffer<ffi::F32> c_in, ffi::Buffer<ffi::U32> keys,
                              ffi::Buffer<ffi::U32> start, ffi::Buffer<ffi::F32> w_out,
                              ffi::Buffer<ffi::F32> in_rows, ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> leak,
                              ffi::Buffer<ffi::F32> root_h, ffi::Buffer<ffi::F32> out_noise,
                              ffi::ResultBuffer<ffi::F32> u_out, ffi::ResultBuffer<ffi::F32> c_out,
                              ffi::ResultBuffer<ffi::S32> bad, int64_t steps, int64_t activation,
                              int64_t num_threads) {
  const auto ud = u_in.dimensions();
  const auto wd = w_out.dimensions();
  if (ud.size() != 2 || wd.size() != 2)
    return ffi::Error::InvalidArgument("rsnjax reservoir kernel: u must be (B, N), w_out (D, N)");
  const int64_t chains = ud[0], n = ud[1], d = wd[0];
  if (wd[1] != n || c_in.element_count() != chains * d || keys.element_count() != 2 * chains ||
      in_rows.element_count() != d * n || bias.element_count() != n || out_noise.element_count() != d * d ||
      start.element_count() != 1 || leak.element_count() != 1 || root_h.element_count() != 1 || steps < 0)
    return ffi::Error::InvalidArgument("rsnjax reservoir kernel: inconsistent shapes");
  ChainFn fn = activation == kTanh ? pick_d<kTanh>(d) : activation == kRelu ? pick_d<kRelu>(d) : nullptr;
  if (fn == nullptr) return ffi::Error::InvalidArgument("rsnjax reservoir kernel: needs 1 <= D <= 8 and tanh/relu");
  float* u = u_out->typed_data();
  if (u != u_in.typed_data()) std::memcpy(u, u_in.typed_data(), sizeof(float) * chains * n);
  float* cs = c_out->typed_data();
  if (cs != c_in.typed_data()) std::memcpy(cs, c_in.typed_data(), sizeof(float) * chains * d);
  int32_t* badp = bad->typed_data();
  if (steps == 0) {
    for (int64_t c = 0; c < chains; ++c) badp[c] = -1;
    return ffi::Error::Success();
  }
  Shared s;
  s.a = leak.typed_data()[0];
  s.root_h = root_h.typed_data()[0];
  s.start = start.typed_data()[0];
  s.n = n;
  s.np = (n + kWidth - 1) / kWidth * kWidth;
  s.steps = steps;
  s.keys = keys.typed_data();
  s.m = out_noise.typed_data();
  // the weights padded with zeros to np and aligned; relu: W_in and I times a (see ScaledPhi)
  AlignedFloats wo(d * s.np), wi(d * s.np), bi(s.np);
  const float scale = activation == kRelu ? s.a : 1.0f;
  for (int64_t j = 0; j < d; ++j)
    for (int64_t i = 0; i < n; ++i) {
      wo.p[j * s.np + i] = w_out.typed_data()[j * n + i];
      wi.p[j * s.np + i] = scale * in_rows.typed_data()[j * n + i];
    }
  for (int64_t i = 0; i < n; ++i) bi.p[i] = scale * bias.typed_data()[i];
  s.wo = wo.p;
  s.wi = wi.p;
  s.bias = bi.p;
  // pieces of a multiple of 4 chains (the chains processed together), about 32 per thread, so
  // that the threads finish within ~1/32 of a call of each other
  const int64_t per = chains / std::max<int64_t>(1, 32 * num_threads);
  const int64_t grain = std::max<int64_t>(4, (per + 3) / 4 * 4);
  parallel_for_dynamic(chains, grain, num_threads, [&](int64_t lo, int64_t hi) { fn(u, cs, badp, s, lo, hi); });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(RsnjaxReservoirSteps, ReservoirStepsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // u (B, N)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // c, the noise state (B, D)
                                  .Arg<ffi::Buffer<ffi::U32>>()  // the chains' key words (B, 2)
                                  .Arg<ffi::Buffer<ffi::U32>>()  // the first global step, ()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_out (D, N)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // in_rows (D, N)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias (N,)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // a = h / tau, ()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // sqrt(h), ()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // W_out G (D, D)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // u after the steps
                                  .Ret<ffi::Buffer<ffi::F32>>()  // c after the steps
                                  .Ret<ffi::Buffer<ffi::S32>>()  // first non-finite step of the call, or -1
                                  .Attr<int64_t>("steps")
                                  .Attr<int64_t>("activation")
                                  .Attr<int64_t>("num_threads"));

// --- plain C entry points (ctypes): the approximation itself and the machine's bounds -----------

extern "C" {

// out[i] = tanh_approx(x[i]) (vector body, scalar tail): the tests measure its error.
void rsnjax_tanh(const float* x, float* out, int64_t n) {
  int64_t i = 0;
  for (; i + kWidth <= n; i += kWidth) store(out + i, tanh_approx(load(x + i)));
  for (; i < n; ++i) out[i] = tanh_approx(x[i]);
}

// `iters` passes of x <- phi(x) * 1.0001 + 1e-3 over `n` floats per thread (each thread its own
// block, as benchmarks/machine_bounds.py's XLA loop): the plain elementwise phi throughput.
void rsnjax_phi_loop(float* x, int64_t n, int64_t iters, int64_t threads, int64_t activation) {
  parallel_for(threads, threads, [&](int64_t lo, int64_t hi) {
    for (int64_t k = lo; k < hi; ++k) {
      float* p = x + k * n;
      const vf m = splat(1.0001f), c = splat(1e-3f);
      for (int64_t it = 0; it < iters; ++it) {
        int64_t i = 0;
        if (activation == kTanh) {
          for (; i + kWidth <= n; i += kWidth) store(p + i, tanh_approx(load(p + i)) * m + c);
          for (; i < n; ++i) p[i] = tanh_approx(p[i]) * 1.0001f + 1e-3f;
        } else {
          for (; i + kWidth <= n; i += kWidth) store(p + i, relu(load(p + i)) * m + c);
          for (; i < n; ++i) p[i] = relu(p[i]) * 1.0001f + 1e-3f;
        }
      }
    }
  });
}

// `iters` read-modify-write passes x <- x * 0.9999 + 1e-4 over `n` floats per thread (each thread its
// own block; four vectors per iteration, so that nothing but the memory traffic limits it): at a
// block size that lives in L2, the rate at which a core can stream a state through L2 and back.
// (Without the barrier below, GCC fuses two passes into one sweep and reports twice the rate.)
void rsnjax_rmw_loop(float* x, int64_t n, int64_t iters, int64_t threads) {
  parallel_for(threads, threads, [&](int64_t lo, int64_t hi) {
    for (int64_t k = lo; k < hi; ++k) {
      float* p = x + k * n;
      const vf m = splat(0.9999f), c = splat(1e-4f);
      for (int64_t it = 0; it < iters; ++it) {
        int64_t i = 0;
        for (; i + 4 * kWidth <= n; i += 4 * kWidth) {
          const vf a0 = load(p + i), a1 = load(p + i + kWidth), a2 = load(p + i + 2 * kWidth),
                   a3 = load(p + i + 3 * kWidth);
          store(p + i, a0 * m + c);
          store(p + i + kWidth, a1 * m + c);
          store(p + i + 2 * kWidth, a2 * m + c);
          store(p + i + 3 * kWidth, a3 * m + c);
        }
        for (; i < n; ++i) p[i] = p[i] * 0.9999f + 1e-4f;
        asm volatile("" ::: "memory");  // one pass per sweep: the compiler may not fuse two passes
      }
    }
  });
}

// Float32 FMA peak: `threads` threads, each `iters` rounds of 12 independent vector FMA chains.
// Returns the number of floating-point operations done (2 per FMA lane); the caller times it.
double rsnjax_fma_loop(int64_t iters, int64_t threads) {
  std::vector<float> sink(threads, 0.0f);
  parallel_for(threads, threads, [&](int64_t lo, int64_t hi) {
    for (int64_t k = lo; k < hi; ++k) {
      constexpr int C = 12;
      vf acc[C];
      for (int c = 0; c < C; ++c) acc[c] = splat(1.0f + 1e-3f * c);
      const vf m = splat(0.999999f), s = splat(1e-7f);
      for (int64_t it = 0; it < iters; ++it)
        for (int c = 0; c < C; ++c) acc[c] = acc[c] * m + s;
      float r = 0.0f;
      for (int c = 0; c < C; ++c) r += hsum(acc[c]);
      sink[k] = r;
    }
  });
  volatile float keep = sink[0];
  (void)keep;
  return 2.0 * 12.0 * kWidth * static_cast<double>(iters) * threads;
}

int64_t rsnjax_vector_width() { return kWidth; }

// out[s] = the kernel's normal of steps first .. first + count − 1, component j, under key words
// (k0, k1): what the kernel adds as noise (tests compare it with rsnjax.sampling.step_noise).
void rsnjax_normals(uint32_t k0, uint32_t k1, uint32_t first, uint32_t j, int64_t count, float* out) {
  std::vector<float> buf((count + kWidth - 1) / kWidth * kWidth);
  normals(k0, k1, first, j, count, buf.data());
  std::memcpy(out, buf.data(), sizeof(float) * count);
}

}  // extern "C"
