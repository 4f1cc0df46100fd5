// rsnjax's fused reservoir step for XLA's CPU backend (called through jax.ffi).
//
// The sampler's loop form of the reservoir's Euler-Maruyama step (rsnjax/sde.py, _ReservoirStep):
//
//     x_t = W_out u_t + xc_t,    u_{t+1} = (1 - a) u_t + a * phi(W_in x_t + I),
//
// with xc_t = (W_out G) c_t the noise part of the readout, computed by the caller (in XLA, from
// rsnjax.sampling.step_noise) for a chunk of L steps. For each chain, this kernel keeps u (N
// floats) hot in L1/L2 over the L steps and does ONE pass over it per step: the update of u and
// the next step's readout W_out u_{t+1} are computed in the same loop. It also reports the first
// step of the chunk whose readout x_t is not finite (-1 if none).
//
// phi: tanh (a rational approximation, the same as Eigen's / XLA's fast float tanh: clamp to
// +-7.9053, odd polynomial of degree 13 over an even one of degree 6) and relu. The arithmetic is
// written with GCC/Clang vector extensions (16 floats with AVX-512, 8 with AVX, else 4) plus a
// scalar tail, so that it vectorises without -ffast-math (which would break the finiteness test).
//
// Build: setup.py (an optional extension; the package works without it, on XLA's loop). The
// XLA FFI headers are vendored in include/ (Apache-2.0, see NOTICE).

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

#if defined(__AVX512F__)
constexpr int kWidth = 16;
#elif defined(__AVX__)
constexpr int kWidth = 8;
#else
constexpr int kWidth = 4;
#endif

typedef float vf __attribute__((vector_size(kWidth * sizeof(float))));
typedef float vf_unaligned __attribute__((vector_size(kWidth * sizeof(float)), aligned(4)));

inline vf load(const float* p) { return *reinterpret_cast<const vf_unaligned*>(p); }
inline void store(float* p, vf v) { *reinterpret_cast<vf_unaligned*>(p) = v; }
inline vf splat(float s) { return vf{} + s; }
// Horizontal sums as a tree of halvings (a serial sum would add a long latency chain per step).
typedef float v2 __attribute__((vector_size(2 * sizeof(float))));
inline float hsum(v2 v) { return v[0] + v[1]; }
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

enum Activation : int64_t { kTanh = 0, kRelu = 1 };

// tanh: the rational approximation of Eigen's generic_fast_tanh_float (which XLA's CPU backend
// also uses): clamp to +-7.9053 (tanh is 1 to float precision there), then x P(x^2) / Q(x^2).
// The clamp is written as x86's min/max (`c < x ? c : x` returns x when x is NaN), so a NaN stays
// NaN as in XLA. Without Eigen's |x| < 4e-4 shortcut (tanh(x) = x): P/Q is within 1.3e-7
// relative there, and the shortcut costs three vector operations.
template <class T>
inline T tanh_approx(T x) {
  const float clamp = 7.90531110763549805f;
  x = clamp < x ? T{} + clamp : x;
  x = -clamp > x ? T{} - clamp : x;
  const T x2 = x * x;
  T p = x2 * -2.76076847742355e-16f + 2.00018790482477e-13f;
  p = p * x2 + -8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  p = p * x;
  T q = x2 * 1.19825839466702e-06f + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  return p / q;
}

// relu as max(0, z) that keeps NaN (jax.nn.relu does)
template <class T>
inline T relu(T z) {
  return 0.0f > z ? T{} + 0.0f : z;
}

// a * phi(z) for the step's leak a. For tanh, a is folded into P's coefficients (a x P(x^2) / Q(x^2)),
// which saves the multiplication; rounding differs from a * tanh(z) by an ulp.
template <int ACT>
struct ScaledPhi {
  float a;
  float pa[7];  // a * P's coefficients, highest first (tanh)
  explicit ScaledPhi(float a_) : a(a_) {
    const float p[7] = {-2.76076847742355e-16f, 2.00018790482477e-13f, -8.60467152213735e-11f,
                        5.12229709037114e-08f,  1.48572235717979e-05f, 6.37261928875436e-04f,
                        4.89352455891786e-03f};
    for (int k = 0; k < 7; ++k) pa[k] = a_ * p[k];
  }
  template <class T>
  inline T operator()(T x) const {
    if constexpr (ACT == kRelu) {
      return a * relu(x);
    } else {
      const float clamp = 7.90531110763549805f;
      x = clamp < x ? T{} + clamp : x;
      x = -clamp > x ? T{} - clamp : x;
      const T x2 = x * x;
      T p = x2 * pa[0] + pa[1];
      for (int k = 2; k < 7; ++k) p = p * x2 + pa[k];
      p = p * x;
      T q = x2 * 1.19825839466702e-06f + 1.18534705686654e-04f;
      q = q * x2 + 2.26843463243900e-03f;
      q = q * x2 + 4.89352518554385e-03f;
      return p / q;
    }
  }
};

// Vector types: full width, half width (the tail of N), and plain float (the last few).
typedef float vh __attribute__((vector_size(kWidth * sizeof(float) / 2)));
typedef float vh_unaligned __attribute__((vector_size(kWidth * sizeof(float) / 2), aligned(4)));
inline vh load_h(const float* p) { return *reinterpret_cast<const vh_unaligned*>(p); }
inline void store_h(float* p, vh v) { *reinterpret_cast<vh_unaligned*>(p) = v; }
template <class V> struct Ops;
template <> struct Ops<vf> {
  static constexpr int kLanes = kWidth;
  static vf load(const float* p) { return ::load(p); }
  static void store(float* p, vf v) { ::store(p, v); }
  static vf splat(float s) { return vf{} + s; }
};
template <> struct Ops<vh> {
  static constexpr int kLanes = kWidth / 2;
  static vh load(const float* p) { return load_h(p); }
  static void store(float* p, vh v) { store_h(p, v); }
  static vh splat(float s) { return vh{} + s; }
};
template <> struct Ops<float> {
  static constexpr int kLanes = 1;
  static float load(const float* p) { return *p; }
  static void store(float* p, float v) { *p = v; }
  static float splat(float s) { return s; }
};
inline float hsum(float v) { return v; }

// Neurons [i, i + lanes) of C chains, one step: u <- (1 - a) u + a phi(in_rows^T x + I), and the
// next readout's partial sums acc[c][j] += W_out[j, i] u. The weights are loaded once for the C chains.
template <class V, int D, int C, int ACT>
inline void update(float* const* u, const V (&x)[C][D], V (&acc)[C][D], const float* wo, const float* wi,
                   const float* bias, const ScaledPhi<ACT>& phi, float b, int64_t n, int64_t i) {
  using O = Ops<V>;
  V w_in[D], w_out[D];
  for (int j = 0; j < D; ++j) {
    w_in[j] = O::load(wi + j * n + i);
    w_out[j] = O::load(wo + j * n + i);
  }
  const V bi = O::load(bias + i);
  for (int c = 0; c < C; ++c) {
    V z = x[c][0] * w_in[0] + bi;  // (x0 r0 + I) + x1 r1 + ...: d multiply-adds
    for (int j = 1; j < D; ++j) z += x[c][j] * w_in[j];
    const V un = O::splat(b) * O::load(u[c] + i) + phi(z);
    O::store(u[c] + i, un);
    for (int j = 0; j < D; ++j) acc[c][j] += w_out[j] * un;
  }
}

// C chains together over `steps` steps. u[c] (n) is updated in place; xc[c] is (steps, D);
// bad_out[c] gets the first step whose readout was not finite, or -1.
template <int D, int C, int ACT>
void run_chains(float* const* u, const float* const* xc, const float* __restrict wo,
                const float* __restrict wi, const float* __restrict bias, float a, int64_t n,
                int64_t steps, int32_t* const* bad_out) {
  const float b = 1.0f - a;
  const ScaledPhi<ACT> phi(a);
  constexpr int64_t W = kWidth, H = kWidth / 2;
  float y[C][D];
  // The readout of the incoming state, summed in exactly the order the step loop sums the next
  // one (full vectors, half vector, last floats), so that the result does not depend on where the
  // run is cut into chunks (segments and checkpoints reproduce the one-program run bit for bit).
  for (int c = 0; c < C; ++c) {
    vf acc[D];
    for (int j = 0; j < D; ++j) acc[j] = splat(0.0f);
    int64_t i = 0;
    for (; i + W <= n; i += W) {
      const vf ui = load(u[c] + i);
      for (int j = 0; j < D; ++j) acc[j] += load(wo + j * n + i) * ui;
    }
    for (int j = 0; j < D; ++j) y[c][j] = hsum(acc[j]);
    if (i + H <= n) {
      const vh ui = load_h(u[c] + i);
      for (int j = 0; j < D; ++j) {
        vh ah = vh{} + 0.0f;
        ah += load_h(wo + j * n + i) * ui;
        y[c][j] += hsum(ah);
      }
      i += H;
    }
    for (; i < n; ++i)
      for (int j = 0; j < D; ++j) {
        float as = 0.0f;
        as += wo[j * n + i] * u[c][i];
        y[c][j] += as;
      }
  }
  int32_t bad[C];
  for (int c = 0; c < C; ++c) bad[c] = -1;
  for (int64_t t = 0; t < steps; ++t) {
    float x[C][D];
    for (int c = 0; c < C; ++c) {
      bool finite = true;
      for (int j = 0; j < D; ++j) {
        x[c][j] = y[c][j] + xc[c][t * D + j];
        finite = finite && std::isfinite(x[c][j]);
      }
      if (!finite && bad[c] < 0) bad[c] = static_cast<int32_t>(t);
    }
    vf xv[C][D], acc[C][D];
    for (int c = 0; c < C; ++c)
      for (int j = 0; j < D; ++j) {
        xv[c][j] = splat(x[c][j]);
        acc[c][j] = splat(0.0f);
      }
    int64_t i = 0;
    for (; i + W <= n; i += W) update<vf, D, C, ACT>(u, xv, acc, wo, wi, bias, phi, b, n, i);
    for (int c = 0; c < C; ++c)
      for (int j = 0; j < D; ++j) y[c][j] = hsum(acc[c][j]);
    if (i + H <= n) {
      vh xh[C][D], ah[C][D];
      for (int c = 0; c < C; ++c)
        for (int j = 0; j < D; ++j) {
          xh[c][j] = vh{} + x[c][j];
          ah[c][j] = vh{} + 0.0f;
        }
      update<vh, D, C, ACT>(u, xh, ah, wo, wi, bias, phi, b, n, i);
      i += H;
      for (int c = 0; c < C; ++c)
        for (int j = 0; j < D; ++j) y[c][j] += hsum(ah[c][j]);
    }
    for (; i < n; ++i) {
      float as[C][D];
      for (int c = 0; c < C; ++c)
        for (int j = 0; j < D; ++j) as[c][j] = 0.0f;
      update<float, D, C, ACT>(u, x, as, wo, wi, bias, phi, b, n, i);
      for (int c = 0; c < C; ++c)
        for (int j = 0; j < D; ++j) y[c][j] += as[c][j];
    }
  }
  for (int c = 0; c < C; ++c) *bad_out[c] = bad[c];
}

// chains [lo, hi) of the block: C at a time (4 for d <= 2, 2 for d <= 4: the weights are loaded
// once for C chains, and C independent chains are in flight), the rest one by one. Each chain's
// arithmetic is the same in any group, so the results do not depend on the grouping (bits).
template <int D, int ACT>
void run_range(float* u, const float* xc, const float* wo, const float* wi, const float* bias, float a,
               int64_t n, int64_t steps, int32_t* bad, int64_t lo, int64_t hi) {
  constexpr int C = D <= 2 ? 4 : D <= 4 ? 2 : 1;
  int64_t c = lo;
  for (; c + C <= hi; c += C) {
    float* us[C];
    const float* xs[C];
    int32_t* bs[C];
    for (int k = 0; k < C; ++k) {
      us[k] = u + (c + k) * n;
      xs[k] = xc + (c + k) * steps * D;
      bs[k] = bad + c + k;
    }
    run_chains<D, C, ACT>(us, xs, wo, wi, bias, a, n, steps, bs);
  }
  for (; c < hi; ++c) {
    float* us[1] = {u + c * n};
    const float* xs[1] = {xc + c * steps * D};
    int32_t* bs[1] = {bad + c};
    run_chains<D, 1, ACT>(us, xs, wo, wi, bias, a, n, steps, bs);
  }
}

using ChainFn = void (*)(float*, const float*, const float*, const float*, const float*, float, int64_t,
                         int64_t, int32_t*, int64_t, int64_t);

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

ffi::Error ReservoirStepsImpl(ffi::Buffer<ffi::F32> u_in, ffi::Buffer<ffi::F32> xc,
                              ffi::Buffer<ffi::F32> w_out, ffi::Buffer<ffi::F32> in_rows,
                              ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> leak,
                              ffi::ResultBuffer<ffi::F32> u_out, ffi::ResultBuffer<ffi::S32> bad,
                              int64_t activation, int64_t num_threads) {
  const auto ud = u_in.dimensions();
  const auto xd = xc.dimensions();
  const auto wd = w_out.dimensions();
  if (ud.size() != 2 || xd.size() != 3 || wd.size() != 2)
    return ffi::Error::InvalidArgument("rsnjax reservoir kernel: u must be (B, N), xc (B, L, D), w_out (D, N)");
  const int64_t chains = ud[0], n = ud[1], steps = xd[1], d = xd[2];
  if (xd[0] != chains || wd[0] != d || wd[1] != n || in_rows.element_count() != d * n ||
      bias.element_count() != n || leak.element_count() != 1)
    return ffi::Error::InvalidArgument("rsnjax reservoir kernel: inconsistent shapes");
  ChainFn fn = activation == kTanh ? pick_d<kTanh>(d) : activation == kRelu ? pick_d<kRelu>(d) : nullptr;
  if (fn == nullptr) return ffi::Error::InvalidArgument("rsnjax reservoir kernel: needs 1 <= D <= 8 and tanh/relu");
  float* u = u_out->typed_data();
  if (u != u_in.typed_data()) std::memcpy(u, u_in.typed_data(), sizeof(float) * chains * n);
  const float a = leak.typed_data()[0];
  const float* xcp = xc.typed_data();
  const float* wo = w_out.typed_data();
  const float* wi = in_rows.typed_data();
  const float* bi = bias.typed_data();
  int32_t* badp = bad->typed_data();
  // pieces of 16 chains (a multiple of the chains processed together), at least 8 per thread
  const int64_t grain = std::max<int64_t>(16, (chains / std::max<int64_t>(1, 8 * num_threads)) / 16 * 16);
  parallel_for_dynamic(chains, grain, num_threads, [&](int64_t lo, int64_t hi) {
    fn(u, xcp, wo, wi, bi, a, n, steps, badp, lo, hi);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(RsnjaxReservoirSteps, ReservoirStepsImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // u (B, N)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // xc (B, L, D)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w_out (D, N)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // in_rows (D, N)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias (N,)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // a = h / tau, ()
                                  .Ret<ffi::Buffer<ffi::F32>>()  // u after L steps
                                  .Ret<ffi::Buffer<ffi::S32>>()  // first non-finite step in the chunk, or -1
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

}  // extern "C"
