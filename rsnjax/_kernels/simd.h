// What rsnjax's two C++ kernels (reservoir.cc, dsm.cc) share: the vector type, φ and their codes.
//
// Vectors are GCC/Clang vector extensions of kWidth floats (16 with AVX-512, 8 with AVX, else 4),
// so that the arithmetic vectorises without -ffast-math (which would break NaN/inf handling).

#ifndef RSNJAX_KERNELS_SIMD_H_
#define RSNJAX_KERNELS_SIMD_H_

#include <cstdint>

#if defined(__SSE__) || defined(__AVX__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace rsnjax_simd {

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

// φ's codes in both kernels' `activation` attribute (rsnjax/_kernels/__init__.py and
// rsnjax/_dsm_kernel.py map names to these).
enum Activation : int64_t { kTanh = 0, kRelu = 1 };

// relu as max(0, z) that keeps NaN (jax.nn.relu does).
template <class T>
inline T relu(T z) {
  return 0.0f > z ? T{} + 0.0f : z;
}
// The same as one instruction: x86's max(a, b) returns its second operand b when either is NaN
// (GCC compiles the select above to a compare and a masked move: two).
inline vf relu(vf z) {
#if defined(__AVX512F__)
  return (vf)_mm512_max_ps(_mm512_setzero_ps(), (__m512)z);
#elif defined(__AVX__)
  return (vf)_mm256_max_ps(_mm256_setzero_ps(), (__m256)z);
#else
  return 0.0f > z ? vf{} : z;
#endif
}

// tanh: the rational approximation of Eigen's generic_fast_tanh_float (which XLA's CPU backend
// also uses): clamp to ±7.9053 (tanh is 1 to float precision there), then x P(x²) / Q(x²). The
// clamp is written as x86's min/max (`c < x ? c : x` returns x when x is NaN), so a NaN stays NaN
// as in XLA. Without Eigen's |x| < 4e-4 shortcut (tanh(x) = x; `tanh_xla` adds it): P/Q is
// within 1.3e-7 relative there.
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

// XLA's CPU tanh exactly: `tanh_approx` with Eigen's shortcut tanh(x) = x for |x| < 4e-4.
inline vf tanh_xla(vf x) {
  const vf ax = x < 0.0f ? -x : x;
  return ax < 0.0004f ? x : tanh_approx(x);
}

}  // namespace rsnjax_simd

#endif  // RSNJAX_KERNELS_SIMD_H_
