// One parameter's AdamW step with gradient clipping, in place: the gradient is scaled by the clipping factor as
// it is read, so no clipped copy of it is made. The update is torch's AdamW in ops.Adam's form (see
// trainers/adamw.py): with s = min(1, max_norm / (norm + 1e-6)) (1 when max_norm = 0), g = s * grad,
//   p <- p * (1 - lr * wd);  m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
//   p <- p - lr_hat * m / (sqrt(v) + eps_hat),  lr_hat = lr sqrt(1 - b2^t) / (1 - b1^t),  eps_hat = eps sqrt(1 - b2^t)
#include <algorithm>

#include "common.h"

// (p, m, v, grad [n each], hyper [7] = lr, b1, b2, eps, wd, t, max_norm, norm [] or [1]) -> (scale [1]);
// p, m and v are written in place.
AOT_KERNEL(AdamWUpdate) {
  float *p = mrl::f32(params, 0), *m = mrl::f32(params, 1), *v = mrl::f32(params, 2);
  const float *g = mrl::f32(params, 3), *h = mrl::f32(params, 4), *norm = mrl::f32(params, 5);
  float *scale_out = mrl::f32(params, 6);
  const int64_t n = mrl::numel(ndims, shapes, 0);
  if (mrl::numel(ndims, shapes, 1) != n || mrl::numel(ndims, shapes, 2) != n || mrl::numel(ndims, shapes, 3) != n ||
      mrl::numel(ndims, shapes, 4) != 7)
    return 1;
  const float lr = h[0], b1 = h[1], b2 = h[2], eps = h[3], wd = h[4], t = h[5], max_norm = h[6];
  const float scale = max_norm > 0.0f ? std::min(1.0f, max_norm / (norm[0] + 1e-6f)) : 1.0f;
  const float bc2 = std::sqrt(1.0f - std::pow(b2, t));
  const float lr_hat = lr * bc2 / (1.0f - std::pow(b1, t)), eps_hat = eps * bc2;
  const float decay = 1.0f - lr * wd, c1 = 1.0f - b1, c2 = 1.0f - b2;
  const bool decayed = wd > 0.0f;
  const int64_t block = 4096;
  mrl::parallel_rows((n + block - 1) / block, 4 * block, [&](int64_t begin, int64_t end) {
    const int64_t stop = std::min(end * block, n);
#pragma omp simd
    for (int64_t i = begin * block; i < stop; i++) {
      const float gi = g[i] * scale;
      const float mi = b1 * m[i] + c1 * gi;
      const float vi = b2 * v[i] + c2 * gi * gi;
      const float pi = decayed ? p[i] * decay : p[i];
      m[i] = mi;
      v[i] = vi;
      p[i] = pi - lr_hat * mi / (std::sqrt(vi) + eps_hat);
    }
  });
  scale_out[0] = scale;
  return 0;
}
