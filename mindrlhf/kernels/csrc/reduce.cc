// The sum of squares of a whole tensor, sum_i x_i^2 (the squared L2 norm; gradient clipping sums it over all
// gradients). Blocks of the flat array are summed in float32 lanes, the block sums added in float64 in block
// order: the same bits whatever the thread count. Forward only: nothing differentiates a gradient norm.
#include <algorithm>
#include <vector>

#include "common.h"

// (x [...]) -> (total [1])
AOT_KERNEL(SumSquares) {
  const float *x = mrl::f32(params, 0);
  float *total = mrl::f32(params, 1);
  const int64_t n = mrl::numel(ndims, shapes, 0), block = 8192, rows = (n + block - 1) / block;
  const int64_t blocks = mrl::block_count(rows, block);
  std::vector<double> partial(static_cast<size_t>(blocks), 0.0);
  mrl::parallel_blocks(rows, block, [&](int64_t b, int64_t begin, int64_t end) {
    double acc = 0.0;
    for (int64_t r = begin; r < end; r++) {
      const int64_t stop = std::min((r + 1) * block, n);
      float s = 0.0f;
#pragma omp simd reduction(+ : s)
      for (int64_t j = r * block; j < stop; j++) s += x[j] * x[j];
      acc += s;
    }
    partial[b] = acc;
  });
  double sum = 0.0;
  for (double p : partial) sum += p;
  total[0] = static_cast<float>(sum);
  return 0;
}
