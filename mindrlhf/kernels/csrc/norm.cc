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
  if (mrl::numel(ndims, shapes, 1) != d) return 1;
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
  if (mrl::numel(ndims, shapes, 0) != rows * d || mrl::numel(ndims, shapes, 2) != d) return 1;
  // dw: one partial sum per block of rows, added in block order: the same bits whatever the thread count
  const int64_t blocks = mrl::block_count(rows, 2 * d);
  std::vector<float> partial(static_cast<size_t>(blocks) * d, 0.0f);
  mrl::parallel_blocks(rows, 2 * d, [&](int64_t block, int64_t begin, int64_t end) {
    float *acc = partial.data() + block * d;
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
  });
  std::fill(dw, dw + d, 0.0f);
  for (int64_t b = 0; b < blocks; b++) {
    const float *acc = partial.data() + b * d;
#pragma omp simd
    for (int64_t j = 0; j < d; j++) dw[j] += acc[j];
  }
  return 0;
}
