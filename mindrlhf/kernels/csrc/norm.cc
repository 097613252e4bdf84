// RMSNorm (Zhang & Sennrich, 2019) over the last axis, one row per thread slice.
//   forward   y = x r w,  r = 1 / sqrt(mean(x^2) + eps)                   (r is kept for the backward)
//   backward  n = x r,  dn = dy w:  dx = r (dn - n mean(dn n)),  dw = sum over rows of dy n
#include <algorithm>
#include <vector>

#include "common.h"

// (x [N, D], w [D], eps [1]) -> (y [N, D], r [N])
AOT_KERNEL(RmsNormForward) {
  const float *x = mrl::f32(params, 0), *w = mrl::f32(params, 1);
  const float eps = mrl::f32(params, 2)[0];
  float *y = mrl::f32(params, 3), *r = mrl::f32(params, 4);
  const int64_t d = mrl::last_dim(ndims, shapes, 0), rows = mrl::numel(ndims, shapes, 0) / d;
  mrl::parallel_rows(rows, d, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; i++) {
      const float *xi = x + i * d;
      float *yi = y + i * d;
      float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
      for (int64_t j = 0; j < d; j++) ss += xi[j] * xi[j];
      const float ri = 1.0f / std::sqrt(ss / static_cast<float>(d) + eps);
      r[i] = ri;
#pragma omp simd
      for (int64_t j = 0; j < d; j++) yi[j] = xi[j] * (ri * w[j]);
    }
  });
  return 0;
}

// (dy [N, D], x [N, D], w [D], r [N]) -> (dx [N, D], dw [D])
AOT_KERNEL(RmsNormBackward) {
  const float *dy = mrl::f32(params, 0), *x = mrl::f32(params, 1), *w = mrl::f32(params, 2), *r = mrl::f32(params, 3);
  float *dx = mrl::f32(params, 4), *dw = mrl::f32(params, 5);
  const int64_t d = mrl::last_dim(ndims, shapes, 1), rows = mrl::numel(ndims, shapes, 1) / d;
  // dw: one partial sum per slice of rows, added in slice order (the same result for the same thread count)
  const int max_parts = mrl::num_threads();
  std::vector<float> partial(static_cast<size_t>(max_parts) * d, 0.0f);
  const int parts = mrl::parallel_parts(rows, 2 * d, [&](int part, int64_t begin, int64_t end) {
    float *acc = partial.data() + part * d;
    for (int64_t i = begin; i < end; i++) {
      const float *dyi = dy + i * d, *xi = x + i * d;
      float *dxi = dx + i * d;
      const float ri = r[i];
      float dot = 0.0f;  // sum of dn n = r sum dy w x
#pragma omp simd reduction(+ : dot)
      for (int64_t j = 0; j < d; j++) dot += dyi[j] * w[j] * xi[j];
      const float c = ri * ri * ri * dot / static_cast<float>(d);
#pragma omp simd
      for (int64_t j = 0; j < d; j++) {
        dxi[j] = ri * dyi[j] * w[j] - c * xi[j];
        acc[j] += dyi[j] * xi[j] * ri;
      }
    }
  }, max_parts);
  std::fill(dw, dw + d, 0.0f);
  for (int p = 0; p < parts; p++) {
    const float *acc = partial.data() + p * d;
#pragma omp simd
    for (int64_t j = 0; j < d; j++) dw[j] += acc[j];
  }
  return 0;
}
