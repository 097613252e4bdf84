// Rotary position embedding (Su et al., 2021), half-split layout, with the tables the model builds:
// sin carries rotate-half's sign, sin = [-sin_plain, sin_plain], so with x = [a | b] per head,
//   forward   y = x cos + [b | a] sin
//   backward  dx_j = dy_j cos_j + dy_k sin_k,  k = j + D/2 (j < D/2) or j - D/2
// x, cos and sin have the same shape [..., D] (a kernel returns 1, an error, when they do not).
#include "common.h"

namespace {
bool same_shapes(int *ndims, int64_t **shapes) {
  const int64_t n = mrl::numel(ndims, shapes, 0);
  return mrl::last_dim(ndims, shapes, 0) % 2 == 0 && mrl::numel(ndims, shapes, 1) == n &&
         mrl::numel(ndims, shapes, 2) == n && mrl::last_dim(ndims, shapes, 1) == mrl::last_dim(ndims, shapes, 0);
}

// One row loop for both directions: the backward is the transposed rotation, which reads the other half of
// the sin table for each term.
template <bool kBackward>
int rope(void **params, int *ndims, int64_t **shapes) {
  const float *x = mrl::f32(params, 0), *c = mrl::f32(params, 1), *s = mrl::f32(params, 2);
  float *y = mrl::f32(params, 3);
  if (!same_shapes(ndims, shapes)) return 1;
  const int64_t d = mrl::last_dim(ndims, shapes, 0), half = d / 2, rows = mrl::numel(ndims, shapes, 0) / d;
  const int64_t first = kBackward ? half : 0, second = kBackward ? 0 : half;  // sin offsets of the two terms
  mrl::parallel_rows(rows, d, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; i++) {
      const int64_t o = i * d;
#pragma omp simd
      for (int64_t j = 0; j < half; j++) {
        y[o + j] = x[o + j] * c[o + j] + x[o + half + j] * s[o + first + j];
        y[o + half + j] = x[o + half + j] * c[o + half + j] + x[o + j] * s[o + second + j];
      }
    }
  });
  return 0;
}
}  // namespace

// (x, cos, sin) -> (y)
AOT_KERNEL(RopeForward) { return rope<false>(params, ndims, shapes); }

// (dy, cos, sin) -> (dx)
AOT_KERNEL(RopeBackward) { return rope<true>(params, ndims, shapes); }
