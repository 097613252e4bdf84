// Swap the two middle axes: (x [A, B, C, D]) -> (y [A, C, B, D]), y[a, c, b] = x[a, b, c] (rows of D copied).
// Attention's heads-first layout and back. It is its own backward (with the shapes swapped). MindSpore's CPU
// Transpose keeps an index table of 8 bytes per element for the graph's life; this copy keeps nothing.
#include "common.h"

AOT_KERNEL(SwapAxes12) {
  if (ndims[0] != 4) return 1;
  const float *x = mrl::f32(params, 0);
  float *y = mrl::f32(params, 1);
  const int64_t a_n = shapes[0][0], b_n = shapes[0][1], c_n = shapes[0][2], d = shapes[0][3];
  const size_t row_bytes = static_cast<size_t>(d) * sizeof(float);
  // one output row block y[a, c] (B rows of D) per task
  mrl::parallel_rows(a_n * c_n, b_n * d, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; r++) {
      const int64_t a = r / c_n, c = r % c_n;
      const float *src = x + (a * b_n * c_n + c) * d;
      float *dst = y + r * b_n * d;
      for (int64_t b = 0; b < b_n; b++) std::memcpy(dst + b * d, src + b * c_n * d, row_bytes);
    }
  });
  return 0;
}
