// Shared by every kernel of the library: the aot entry-point signature, shape helpers, a vectorisable exp,
// and a row-parallel loop over a small persistent thread pool (parallel.cc).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>

#define AOT_KERNEL(name) \
  extern "C" int name(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes, void *stream, \
                      void *extra)

namespace mrl {

inline float *f32(void **params, int i) { return static_cast<float *>(params[i]); }
inline const int32_t *i32(void **params, int i) { return static_cast<const int32_t *>(params[i]); }

// Number of elements of parameter i.
inline int64_t numel(int *ndims, int64_t **shapes, int i) {
  int64_t n = 1;
  for (int d = 0; d < ndims[i]; d++) n *= shapes[i][d];
  return n;
}
// Size of the last axis of parameter i (1 for a 0-d tensor).
inline int64_t last_dim(int *ndims, int64_t **shapes, int i) { return ndims[i] ? shapes[i][ndims[i] - 1] : 1; }

// exp(x) for float32, written without branches or calls so that g++ vectorises loops over it
// (glibc's expf is not vectorised without -ffast-math). Cephes' expf: x = n ln2 + r, |r| <= ln2/2,
// exp(r) by a degree-6 polynomial, 2^n through the exponent bits; about 1 ulp. x is clamped to
// [-87.3, 88.7]: results stay finite and normal (exp(-100) gives 1.2e-38, not 3.7e-44).
inline float exp_f32(float x) {
  x = x < -87.33654f ? -87.33654f : x;  // comparisons, not fmin/fmax: those do not vectorise (NaN rules)
  x = x > 88.72283f ? 88.72283f : x;
  float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = std::fma(n, -0.693359375f, x);
  r = std::fma(n, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = std::fma(p, r, 1.3981999507e-3f);
  p = std::fma(p, r, 8.3334519073e-3f);
  p = std::fma(p, r, 4.1665795894e-2f);
  p = std::fma(p, r, 1.6666665459e-1f);
  p = std::fma(p, r, 5.0000001201e-1f);
  p = std::fma(p, r * r, r) + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

inline float sigmoid_f32(float x) { return 1.0f / (1.0f + exp_f32(-x)); }

// Calls fn(block, begin, end) for the blocks of [0, rows): block_count(rows, cost) contiguous slices in row
// order, a function of the sizes only, spread over up to num_threads() threads (the caller among them); with
// less than ~16k elements of work (rows * cost) there is one block, on the caller.
void parallel_blocks(int64_t rows, int64_t cost, const std::function<void(int64_t, int64_t, int64_t)> &fn);
int64_t block_count(int64_t rows, int64_t cost);
int num_threads();

inline void parallel_rows(int64_t rows, int64_t cost, const std::function<void(int64_t, int64_t)> &fn) {
  parallel_blocks(rows, cost, [&](int64_t, int64_t begin, int64_t end) { fn(begin, end); });
}

}  // namespace mrl
