// rsnjax's score-network kernels for the DSM training step on XLA's CPU backend (called through
// jax.ffi from rsnjax/_dsm_kernel.py).
//
// A ScoreNetwork's score is s(x) = -x + A phi(B x + b) with A (D, N), B (N, D), b (N). For small
// D (1 <= D <= 4) and a batch of rows x (rows, D), the work is all in the (rows x N) activations.
// Two kernels, each ONE pass over those activations with nothing (rows x N)-sized in memory:
//
//   forward(x, A, B, b)        -> out = phi(x B^T + b) A^T                     (rows, D)
//   backward(x, g, A, B, b)    -> gA = g^T h, gB = gh^T x, gb = sum_rows gh    (D,N), (N,D), (N)
//                                 with h = phi(x B^T + b), gh = (g A) * phi'(x B^T + b)
//
// backward recomputes the pre-activations rather than storing them: the parameters of a block of
// neurons and its gradient accumulators stay in registers while the loop runs over the rows
// (rows x D floats, in L1). forward runs over the neurons for a few rows at a time. The caller
// (XLA) computes the output cotangent g from out (d is small, so that is cheap).
//
// phi: relu (derivative 1[u > 0], as XLA's) and tanh (Eigen's / XLA's fast float rational
// approximation, derivative 1 - h^2). Written with GCC/Clang vector extensions (16 floats with
// AVX-512, 8 with AVX, else 4) without -ffast-math; the sums run in a fixed order, so that the
// same inputs give the same outputs. The last partial block of neurons is copied into zero-padded
// stack buffers (A = 0 there, so padded neurons add nothing to out).
//
// Build: setup.py (an optional extension; the package works without it, on XLA).

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "simd.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using namespace rsnjax_simd;

constexpr int kMaxDim = 4;

// A sequential horizontal sum (the order the tests' references were measured with).
inline float hsum(vf v) {
  float s = 0.0f;
  for (int k = 0; k < kWidth; ++k) s += v[k];
  return s;
}

template <int ACT>
inline vf phi(vf z) {
  if constexpr (ACT == kTanh) return tanh_xla(z);
  else return relu(z);
}

// The parameters of one block of kWidth neurons: a[k], bt[k] point at A's and B^T's row k.
template <int D>
struct Block {
  const float* a[D];
  const float* bt[D];
  const float* b;
};

// --- forward -----------------------------------------------------------------------------------

// out[r, k] += sum over the block's neurons of A[k, n] phi(u[r, n]) for R rows starting at x.
template <int D, int ACT, int R>
inline void forward_block(const Block<D>& blk, const float* x, vf (&acc)[R][D]) {
  vf av[D], bv[D];
  const vf bias = load(blk.b);
  for (int k = 0; k < D; ++k) {
    av[k] = load(blk.a[k]);
    bv[k] = load(blk.bt[k]);
  }
  for (int r = 0; r < R; ++r) {
    vf u = bias;
    for (int k = 0; k < D; ++k) u += x[r * D + k] * bv[k];
    const vf h = phi<ACT>(u);
    for (int k = 0; k < D; ++k) acc[r][k] += av[k] * h;
  }
}

template <int D, int ACT, int R>
void forward_rows(const float* x, float* out, const float* A, const float* BT, const float* b,
                  const Block<D>& tail, int64_t n_full, int64_t n, bool has_tail) {
  vf acc[R][D];
  for (int r = 0; r < R; ++r)
    for (int k = 0; k < D; ++k) acc[r][k] = splat(0.0f);
  Block<D> blk;
  for (int64_t j = 0; j < n_full; j += kWidth) {
    for (int k = 0; k < D; ++k) {
      blk.a[k] = A + k * n + j;
      blk.bt[k] = BT + k * n + j;
    }
    blk.b = b + j;
    forward_block<D, ACT, R>(blk, x, acc);
  }
  if (has_tail) forward_block<D, ACT, R>(tail, x, acc);
  for (int r = 0; r < R; ++r)
    for (int k = 0; k < D; ++k) out[r * D + k] = hsum(acc[r][k]);
}

template <int D, int ACT>
void forward(const float* x, float* out, const float* A, const float* BT, const float* b,
             const Block<D>& tail, int64_t rows, int64_t n, int64_t n_full, bool has_tail) {
  constexpr int R = D <= 2 ? 4 : 2;  // rows per pass (accumulators R*D vectors)
  int64_t i = 0;
  for (; i + R <= rows; i += R)
    forward_rows<D, ACT, R>(x + i * D, out + i * D, A, BT, b, tail, n_full, n, has_tail);
  for (; i < rows; ++i) forward_rows<D, ACT, 1>(x + i * D, out + i * D, A, BT, b, tail, n_full, n, has_tail);
}

// --- backward ----------------------------------------------------------------------------------

// One row's contribution to a block's gradient accumulators.
template <int D, int ACT>
inline void backward_row(const vf (&av)[D], const vf (&bv)[D], vf bias, const float* xi, const float* gi,
                         vf (&ga)[D], vf (&gbt)[D], vf& gb) {
  vf u = bias;
  for (int k = 0; k < D; ++k) u += xi[k] * bv[k];
  const vf h = phi<ACT>(u);
  vf t = gi[0] * av[0];
  for (int k = 1; k < D; ++k) t += gi[k] * av[k];
  vf gh;
  if constexpr (ACT == kRelu) gh = u > 0.0f ? t : splat(0.0f);
  else gh = t * (1.0f - h * h);
  for (int k = 0; k < D; ++k) {
    ga[k] += gi[k] * h;
    gbt[k] += xi[k] * gh;
  }
  gb += gh;
}

// The gradients of one block of neurons, summed over all rows; the accumulators stay in registers.
// Two sets of accumulators (even and odd rows, added at the end) hide the adds' latency.
template <int D, int ACT>
inline void backward_block(const Block<D>& blk, const float* x, const float* g, int64_t rows,
                           vf (&ga)[D], vf (&gbt)[D], vf& gb) {
  vf av[D], bv[D], ga2[D], gbt2[D];
  const vf bias = load(blk.b);
  for (int k = 0; k < D; ++k) {
    av[k] = load(blk.a[k]);
    bv[k] = load(blk.bt[k]);
    ga[k] = ga2[k] = splat(0.0f);
    gbt[k] = gbt2[k] = splat(0.0f);
  }
  gb = splat(0.0f);
  vf gb2 = splat(0.0f);
  int64_t i = 0;
  for (; i + 2 <= rows; i += 2) {
    backward_row<D, ACT>(av, bv, bias, x + i * D, g + i * D, ga, gbt, gb);
    backward_row<D, ACT>(av, bv, bias, x + (i + 1) * D, g + (i + 1) * D, ga2, gbt2, gb2);
  }
  if (i < rows) backward_row<D, ACT>(av, bv, bias, x + i * D, g + i * D, ga, gbt, gb);
  for (int k = 0; k < D; ++k) {
    ga[k] += ga2[k];
    gbt[k] += gbt2[k];
  }
  gb += gb2;
}

template <int D, int ACT>
void backward(const float* x, const float* g, const float* A, const float* BT, const float* b,
              const Block<D>& tail, int64_t rows, int64_t n, int64_t n_full, bool has_tail,
              float* gA, float* gB, float* gbias) {
  Block<D> blk;
  vf ga[D], gbt[D], gb;
  for (int64_t j = 0; j < n_full; j += kWidth) {
    for (int k = 0; k < D; ++k) {
      blk.a[k] = A + k * n + j;
      blk.bt[k] = BT + k * n + j;
    }
    blk.b = b + j;
    backward_block<D, ACT>(blk, x, g, rows, ga, gbt, gb);
    for (int k = 0; k < D; ++k) store(gA + k * n + j, ga[k]);
    store(gbias + j, gb);
    for (int m = 0; m < kWidth; ++m)
      for (int k = 0; k < D; ++k) gB[(j + m) * D + k] = gbt[k][m];
  }
  if (has_tail) {
    backward_block<D, ACT>(tail, x, g, rows, ga, gbt, gb);
    for (int64_t m = 0; m < n - n_full; ++m) {
      for (int k = 0; k < D; ++k) {
        gA[k * n + n_full + m] = ga[k][m];
        gB[(n_full + m) * D + k] = gbt[k][m];
      }
      gbias[n_full + m] = gb[m];
    }
  }
}

// --- shared setup: B^T (contiguous per input dimension) and the zero-padded last block ----------

template <int D>
struct Params {
  const float* A;
  const float* BT;
  const float* b;
  int64_t n, n_full;
  bool has_tail;
  Block<D> tail;
  std::vector<float>* scratch;
  alignas(64) float tail_a[D][kWidth];
  alignas(64) float tail_bt[D][kWidth];
  alignas(64) float tail_b[kWidth];

  Params(const float* A_, const float* B, const float* b_, int64_t n_) : A(A_), b(b_), n(n_) {
    thread_local std::vector<float> buffer;
    if (D == 1) {
      BT = B;  // (N, 1) is already contiguous
    } else {
      buffer.resize(static_cast<size_t>(D * n));
      for (int64_t i = 0; i < n; ++i)
        for (int k = 0; k < D; ++k) buffer[k * n + i] = B[i * D + k];
      BT = buffer.data();
    }
    n_full = n - n % kWidth;
    has_tail = n_full < n;
    for (int k = 0; k < D; ++k) {
      for (int m = 0; m < kWidth; ++m) {
        const bool in = n_full + m < n;
        tail_a[k][m] = in ? A[k * n + n_full + m] : 0.0f;
        tail_bt[k][m] = in ? BT[k * n + n_full + m] : 0.0f;
      }
      tail.a[k] = tail_a[k];
      tail.bt[k] = tail_bt[k];
    }
    for (int m = 0; m < kWidth; ++m) tail_b[m] = n_full + m < n ? b[n_full + m] : 0.0f;
    tail.b = tail_b;
  }
};

template <int D, int ACT>
void run_forward(const float* x, const float* A, const float* B, const float* b, float* out, int64_t rows,
                 int64_t n) {
  Params<D> p(A, B, b, n);
  forward<D, ACT>(x, out, p.A, p.BT, p.b, p.tail, rows, n, p.n_full, p.has_tail);
}

template <int D, int ACT>
void run_backward(const float* x, const float* g, const float* A, const float* B, const float* b,
                  float* gA, float* gB, float* gb, int64_t rows, int64_t n) {
  Params<D> p(A, B, b, n);
  backward<D, ACT>(x, g, p.A, p.BT, p.b, p.tail, rows, n, p.n_full, p.has_tail, gA, gB, gb);
}

using ForwardFn = void (*)(const float*, const float*, const float*, const float*, float*, int64_t, int64_t);
using BackwardFn = void (*)(const float*, const float*, const float*, const float*, const float*, float*,
                            float*, float*, int64_t, int64_t);

template <int ACT>
ForwardFn pick_forward(int64_t d) {
  switch (d) {
    case 1: return run_forward<1, ACT>;
    case 2: return run_forward<2, ACT>;
    case 3: return run_forward<3, ACT>;
    case 4: return run_forward<4, ACT>;
    default: return nullptr;
  }
}

template <int ACT>
BackwardFn pick_backward(int64_t d) {
  switch (d) {
    case 1: return run_backward<1, ACT>;
    case 2: return run_backward<2, ACT>;
    case 3: return run_backward<3, ACT>;
    case 4: return run_backward<4, ACT>;
    default: return nullptr;
  }
}

// Shapes: x (rows, D), A (D, N), B (N, D), b (N). Returns an error message, or nullptr.
const char* check_shapes(ffi::Buffer<ffi::F32>& x, ffi::Buffer<ffi::F32>& A, ffi::Buffer<ffi::F32>& B,
                         ffi::Buffer<ffi::F32>& b, int64_t* rows, int64_t* d, int64_t* n) {
  const auto xd = x.dimensions(), ad = A.dimensions(), bd = B.dimensions(), cd = b.dimensions();
  if (xd.size() != 2 || ad.size() != 2 || bd.size() != 2 || cd.size() != 1)
    return "rsnjax DSM kernel: x must be (rows, D), A (D, N), B (N, D), b (N,)";
  *rows = xd[0];
  *d = xd[1];
  *n = ad[1];
  if (ad[0] != *d || bd[0] != *n || bd[1] != *d || cd[0] != *n)
    return "rsnjax DSM kernel: inconsistent shapes of x (rows, D), A (D, N), B (N, D), b (N,)";
  if (*d < 1 || *d > kMaxDim) return "rsnjax DSM kernel: needs 1 <= D <= 4";
  return nullptr;
}

ffi::Error ForwardImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> A, ffi::Buffer<ffi::F32> B,
                       ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> out, int64_t activation) {
  int64_t rows, d, n;
  if (const char* err = check_shapes(x, A, B, b, &rows, &d, &n)) return ffi::Error::InvalidArgument(err);
  if (static_cast<int64_t>(out->element_count()) != rows * d) return ffi::Error::InvalidArgument("rsnjax DSM kernel: out must be (rows, D)");
  ForwardFn fn = activation == kRelu ? pick_forward<kRelu>(d) : activation == kTanh ? pick_forward<kTanh>(d) : nullptr;
  if (fn == nullptr) return ffi::Error::InvalidArgument("rsnjax DSM kernel: activation must be relu (0) or tanh (1)");
  if (n == 0) {
    std::fill_n(out->typed_data(), rows * d, 0.0f);
    return ffi::Error::Success();
  }
  fn(x.typed_data(), A.typed_data(), B.typed_data(), b.typed_data(), out->typed_data(), rows, n);
  return ffi::Error::Success();
}

ffi::Error BackwardImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> A,
                        ffi::Buffer<ffi::F32> B, ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> gA,
                        ffi::ResultBuffer<ffi::F32> gB, ffi::ResultBuffer<ffi::F32> gb, int64_t activation) {
  int64_t rows, d, n;
  if (const char* err = check_shapes(x, A, B, b, &rows, &d, &n)) return ffi::Error::InvalidArgument(err);
  if (static_cast<int64_t>(g.element_count()) != rows * d || static_cast<int64_t>(gA->element_count()) != d * n || static_cast<int64_t>(gB->element_count()) != n * d ||
      static_cast<int64_t>(gb->element_count()) != n)
    return ffi::Error::InvalidArgument("rsnjax DSM kernel: g must be (rows, D), gA (D, N), gB (N, D), gb (N,)");
  BackwardFn fn = activation == kRelu ? pick_backward<kRelu>(d) : activation == kTanh ? pick_backward<kTanh>(d) : nullptr;
  if (fn == nullptr) return ffi::Error::InvalidArgument("rsnjax DSM kernel: activation must be relu (0) or tanh (1)");
  if (n == 0) return ffi::Error::Success();
  fn(x.typed_data(), g.typed_data(), A.typed_data(), B.typed_data(), b.typed_data(), gA->typed_data(),
     gB->typed_data(), gb->typed_data(), rows, n);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(RsnjaxDsmForward, ForwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x (rows, D)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // A (D, N)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // B (N, D)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b (N,)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // out = phi(x B^T + b) A^T (rows, D)
                                  .Attr<int64_t>("activation"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(RsnjaxDsmBackward, BackwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x (rows, D)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // g, the cotangent of out (rows, D)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // A (D, N)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // B (N, D)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b (N,)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // gA (D, N)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // gB (N, D)
                                  .Ret<ffi::Buffer<ffi::F32>>()  // gb (N,)
                                  .Attr<int64_t>("activation"));

extern "C" int64_t rsnjax_dsm_vector_width() { return kWidth; }
