// The MLP activations, element-wise over flat arrays.
//   SwiGLU (Shazeer, 2020): h = [a | b] on the last axis, y = silu(a) b = a s(a) b, s = sigmoid
//       da = dy b s (1 + a (1 - s)),  db = dy a s
//   GELU, tanh form (GPT-2): y = x s(z), z = c (x + k x^3), c = 2 sqrt(2/pi), k = 0.044715
//       (0.5 (1 + tanh(z/2)) = s(z));  dx = dy (s + x s (1 - s) c (1 + 3 k x^2))
#include <algorithm>

#include "common.h"

namespace {
constexpr float kGeluC = 1.5957691216057308f;  // 2 sqrt(2 / pi)
constexpr float kGeluK = 0.044715f;
}  // namespace

// (h [N, 2W]) -> (y [N, W])
AOT_KERNEL(SwigluForward) {
  const float *h = mrl::f32(params, 0);
  float *y = mrl::f32(params, 1);
  const int64_t w2 = mrl::last_dim(ndims, shapes, 0), w = w2 / 2, rows = mrl::numel(ndims, shapes, 0) / w2;
  if (w2 % 2 != 0) return 1;
  mrl::parallel_rows(rows, w2, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; i++) {
      const float *a = h + i * w2, *b = a + w;
      float *yi = y + i * w;
#pragma omp simd
      for (int64_t j = 0; j < w; j++) yi[j] = a[j] * mrl::sigmoid_f32(a[j]) * b[j];
    }
  });
  return 0;
}

// (dy [N, W], h [N, 2W]) -> (dh [N, 2W])
AOT_KERNEL(SwigluBackward) {
  const float *dy = mrl::f32(params, 0), *h = mrl::f32(params, 1);
  float *dh = mrl::f32(params, 2);
  const int64_t w2 = mrl::last_dim(ndims, shapes, 1), w = w2 / 2, rows = mrl::numel(ndims, shapes, 1) / w2;
  if (w2 % 2 != 0 || mrl::numel(ndims, shapes, 0) != rows * w) return 1;
  mrl::parallel_rows(rows, 2 * w2, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; i++) {
      const float *a = h + i * w2, *b = a + w, *dyi = dy + i * w;
      float *da = dh + i * w2, *db = da + w;
#pragma omp simd
      for (int64_t j = 0; j < w; j++) {
        const float s = mrl::sigmoid_f32(a[j]);
        da[j] = dyi[j] * b[j] * s * (1.0f + a[j] * (1.0f - s));
        db[j] = dyi[j] * a[j] * s;
      }
    }
  });
  return 0;
}

// (x [...]) -> (y [...])
AOT_KERNEL(GeluTanhForward) {
  const float *x = mrl::f32(params, 0);
  float *y = mrl::f32(params, 1);
  const int64_t n = mrl::numel(ndims, shapes, 0), block = 4096;
  mrl::parallel_rows((n + block - 1) / block, block, [&](int64_t begin, int64_t end) {
    const int64_t stop = std::min(end * block, n);
#pragma omp simd
    for (int64_t j = begin * block; j < stop; j++) {
      const float v = x[j];
      y[j] = v * mrl::sigmoid_f32(kGeluC * (v + kGeluK * v * v * v));
    }
  });
  return 0;
}

// (dy [...], x [...]) -> (dx [...])
AOT_KERNEL(GeluTanhBackward) {
  const float *dy = mrl::f32(params, 0), *x = mrl::f32(params, 1);
  float *dx = mrl::f32(params, 2);
  const int64_t n = mrl::numel(ndims, shapes, 1), block = 4096;
  if (mrl::numel(ndims, shapes, 0) != n) return 1;
  mrl::parallel_rows((n + block - 1) / block, 2 * block, [&](int64_t begin, int64_t end) {
    const int64_t stop = std::min(end * block, n);
#pragma omp simd
    for (int64_t j = begin * block; j < stop; j++) {
      const float v = x[j];
      const float s = mrl::sigmoid_f32(kGeluC * (v + kGeluK * v * v * v));
      dx[j] = dy[j] * (s + v * s * (1.0f - s) * kGeluC * (1.0f + 3.0f * kGeluK * v * v));
    }
  });
  return 0;
}
