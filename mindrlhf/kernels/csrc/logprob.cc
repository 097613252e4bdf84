// The log-probability of the taken token and the entropy of softmax(logits), over the vocabulary in chunks:
// the LM head's logits are made one chunk of columns at a time (a matmul outside these kernels), so the
// whole [N, V] never exists. Per row, over chunks, an online logsumexp (Milakov & Gimelshein, 2018) keeps
//   m = max so far,  s = sum exp(l - m),  u = sum exp(l - m) (l - m),  t = the taken token's logit;
// a new chunk with a larger max rescales s and u by exp(m_old - m_new). At the end
//   lse = m + log s,   log p(y) = (t - m) - log s,   entropy = -sum p log p = log s - u / s.
// The gradient of a chunk, from the upstream gradients g_lp of log p(y) and g_ent of the entropy:
//   dl_v = g_lp (1[v = y] - p_v) - g_ent p_v (log p_v + entropy),   p_v = exp(l_v - lse).
#include <algorithm>
#include <limits>

#include "common.h"

// (logits [N, C], labels [N] int32[, state [N, 4]]) -> (state [N, 4]); without an input state this is the
// first chunk. labels count from the chunk's first column (a label outside [0, C) is in another chunk).
AOT_KERNEL(LogitsChunkStats) {
  const bool first = nparam == 3;
  const float *logits = mrl::f32(params, 0);
  const int32_t *labels = mrl::i32(params, 1);
  const float *state_in = first ? nullptr : mrl::f32(params, 2);
  float *state = mrl::f32(params, nparam - 1);
  const int64_t c = mrl::last_dim(ndims, shapes, 0), rows = mrl::numel(ndims, shapes, 0) / c;
  if (mrl::numel(ndims, shapes, 1) != rows || (!first && mrl::numel(ndims, shapes, 2) != rows * 4)) return 1;
  mrl::parallel_rows(rows, 2 * c, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; i++) {
      const float *l = logits + i * c;
      float cmax = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : cmax)
      for (int64_t v = 0; v < c; v++) cmax = std::max(cmax, l[v]);
      float m = cmax, s = 0.0f, u = 0.0f, t = 0.0f;
      if (!first) {
        const float *old = state_in + i * 4;
        m = std::max(old[0], cmax);
        const float shift = old[0] - m, scale = std::exp(shift);
        s = old[1] * scale;
        u = scale * (old[2] + shift * old[1]);
        t = old[3];
      }
      float cs = 0.0f, cu = 0.0f;
#pragma omp simd reduction(+ : cs, cu)
      for (int64_t v = 0; v < c; v++) {
        const float z = l[v] - m, e = mrl::exp_f32(z);
        cs += e;
        cu += e * z;
      }
      const int64_t y = labels[i];
      if (y >= 0 && y < c) t = l[y];
      float *out = state + i * 4;
      out[0] = m;
      out[1] = s + cs;
      out[2] = u + cu;
      out[3] = t;
    }
  });
  return 0;
}

// (state [N, 4]) -> (logp [N], stats [N, 2] = (entropy, lse))
AOT_KERNEL(LogitsFinish) {
  const float *state = mrl::f32(params, 0);
  float *logp = mrl::f32(params, 1), *stats = mrl::f32(params, 2);
  const int64_t rows = mrl::numel(ndims, shapes, 0) / 4;
  for (int64_t i = 0; i < rows; i++) {
    const float *st = state + i * 4;
    const float log_s = std::log(st[1]), lse = st[0] + log_s;
    logp[i] = (st[3] - st[0]) - log_s;  // as log_softmax: t - m is exact when t is near m
    stats[2 * i] = log_s - st[2] / st[1];
    stats[2 * i + 1] = lse;
  }
  return 0;
}

// (logits [N, C], labels [N] int32 (from the chunk's first column), stats [N, 2] = (entropy, lse), g_lp [N],
//  g_stats [N, 2] = (g_ent, unused)) -> (dlogits [N, C])
AOT_KERNEL(LogitsChunkGrad) {
  const float *logits = mrl::f32(params, 0);
  const int32_t *labels = mrl::i32(params, 1);
  const float *stats = mrl::f32(params, 2);
  const float *g_lp = mrl::f32(params, 3), *g_stats = mrl::f32(params, 4);
  float *grad = mrl::f32(params, 5);
  const int64_t c = mrl::last_dim(ndims, shapes, 0), rows = mrl::numel(ndims, shapes, 0) / c;
  if (mrl::numel(ndims, shapes, 1) != rows || mrl::numel(ndims, shapes, 2) != 2 * rows ||
      mrl::numel(ndims, shapes, 3) != rows || mrl::numel(ndims, shapes, 4) != 2 * rows)
    return 1;
  mrl::parallel_rows(rows, 2 * c, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; i++) {
      const float *l = logits + i * c;
      float *d = grad + i * c;
      const float hi = stats[2 * i], li = stats[2 * i + 1], gl = g_lp[i], ge = g_stats[2 * i];
#pragma omp simd
      for (int64_t v = 0; v < c; v++) {
        const float z = l[v] - li, p = mrl::exp_f32(z);
        d[v] = -p * (gl + ge * (z + hi));
      }
      const int64_t y = labels[i];
      if (y >= 0 && y < c) d[y] += gl;
    }
  });
  return 0;
}
