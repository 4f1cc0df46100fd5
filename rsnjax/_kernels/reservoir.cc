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
inline float hsum(vf v) {
  float s = 0.0f;
  for (int k = 0; k < kWidth; ++k) s += v[k];
  return s;
}

enum Activation : int64_t { kTanh = 0, kRelu = 1 };

// tanh: Eigen's generic_fast_tanh_float (the approximation XLA's CPU backend also uses). The clamp
// is written so that a NaN stays NaN (both comparisons are false for NaN), as in XLA.
template <class T>
inline T tanh_approx(T x_in) {
  const float clamp = 7.90531110763549805f;
  T x = x_in > clamp ? clamp : x_in;
  x = x < -clamp ? -clamp : x;
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
  const T r = p / q;
  // |x| < 0.0004: tanh(x) = x to float precision
  const T ax = x_in < 0.0f ? -x_in : x_in;
  return ax < 0.0004f ? x_in : r;
}

// relu as max(z, 0) that keeps NaN (jax.nn.relu does)
template <class T>
inline T relu(T z) {
  return z < 0.0f ? T{} + 0.0f : z;
}

template <int ACT, class T>
inline T phi(T z) {
  if constexpr (ACT == kTanh) return tanh_approx(z);
  else return relu(z);
}

// One chain, L steps. u (n) is updated in place; xc is (L, D) for this chain.
template <int D, int ACT>
void run_chain(float* __restrict u, const float* __restrict xc, const float* __restrict wo,
               const float* __restrict wi, const float* __restrict bias, float a, int64_t n,
               int64_t steps, int32_t* bad_out) {
  constexpr int U = 2;  // independent accumulator sets (the readout's FMA latency)
  const float b = 1.0f - a;
  const vf av = splat(a), bv = splat(b);
  float y[D];
  {  // readout of the incoming state
    vf acc[D];
    for (int j = 0; j < D; ++j) acc[j] = splat(0.0f);
    int64_t i = 0;
    for (; i + kWidth <= n; i += kWidth) {
      const vf ui = load(u + i);
      for (int j = 0; j < D; ++j) acc[j] += load(wo + j * n + i) * ui;
    }
    for (int j = 0; j < D; ++j) {
      y[j] = hsum(acc[j]);
      for (int64_t k = i; k < n; ++k) y[j] += wo[j * n + k] * u[k];
    }
  }
  int32_t bad = -1;
  for (int64_t t = 0; t < steps; ++t) {
    float x[D];
    bool finite = true;
    for (int j = 0; j < D; ++j) {
      x[j] = y[j] + xc[t * D + j];
      finite = finite && std::isfinite(x[j]);
    }
    if (!finite && bad < 0) bad = static_cast<int32_t>(t);
    vf xv[D];
    for (int j = 0; j < D; ++j) xv[j] = splat(x[j]);
    vf acc[U][D];
    for (int k = 0; k < U; ++k)
      for (int j = 0; j < D; ++j) acc[k][j] = splat(0.0f);
    int64_t i = 0;
    for (; i + U * kWidth <= n; i += U * kWidth) {
      for (int k = 0; k < U; ++k) {
        const int64_t o = i + k * kWidth;
        vf z = xv[0] * load(wi + o);
        for (int j = 1; j < D; ++j) z += xv[j] * load(wi + j * n + o);
        z += load(bias + o);
        const vf un = bv * load(u + o) + av * phi<ACT>(z);
        store(u + o, un);
        for (int j = 0; j < D; ++j) acc[k][j] += load(wo + j * n + o) * un;
      }
    }
    for (; i + kWidth <= n; i += kWidth) {
      vf z = xv[0] * load(wi + i);
      for (int j = 1; j < D; ++j) z += xv[j] * load(wi + j * n + i);
      z += load(bias + i);
      const vf un = bv * load(u + i) + av * phi<ACT>(z);
      store(u + i, un);
      for (int j = 0; j < D; ++j) acc[0][j] += load(wo + j * n + i) * un;
    }
    for (int j = 0; j < D; ++j) {
      vf s = acc[0][j];
      for (int k = 1; k < U; ++k) s += acc[k][j];
      y[j] = hsum(s);
    }
    for (; i < n; ++i) {
      float z = x[0] * wi[i];
      for (int j = 1; j < D; ++j) z += x[j] * wi[j * n + i];
      z += bias[i];
      const float un = b * u[i] + a * phi<ACT>(z);
      u[i] = un;
      for (int j = 0; j < D; ++j) y[j] += wo[j * n + i] * un;
    }
  }
  *bad_out = bad;
}

using ChainFn = void (*)(float*, const float*, const float*, const float*, const float*, float, int64_t,
                         int64_t, int32_t*);

template <int ACT>
ChainFn pick_d(int64_t d) {
  switch (d) {
    case 1: return run_chain<1, ACT>;
    case 2: return run_chain<2, ACT>;
    case 3: return run_chain<3, ACT>;
    case 4: return run_chain<4, ACT>;
    case 5: return run_chain<5, ACT>;
    case 6: return run_chain<6, ACT>;
    case 7: return run_chain<7, ACT>;
    case 8: return run_chain<8, ACT>;
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
  parallel_for(chains, num_threads, [&](int64_t lo, int64_t hi) {
    for (int64_t c = lo; c < hi; ++c) fn(u + c * n, xcp + c * steps * d, wo, wi, bi, a, n, steps, badp + c);
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
