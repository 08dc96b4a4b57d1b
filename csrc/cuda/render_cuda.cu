// CUDA rasterizer: draws a host-computed layout with an atlas resident on the GPU.
//
// One thread block per (image, text row) band. The block first maps each pixel column of
// the band to (glyph, column in glyph) in shared memory, then writes every pixel of the
// band in row-major order, so the global writes are fully coalesced and each pixel is
// written exactly once (no background memset pass).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "checks.h"
#include "render/render.h"

namespace clippo {
namespace {

constexpr int kThreads = 256;
constexpr int kChunk = 1024;  // columns mapped per pass; bounds shared memory for wide images

__global__ void rasterize_kernel(const int32_t* __restrict__ glyphs, int64_t num_items,
                                 const int32_t* __restrict__ row_offsets,
                                 const int32_t* __restrict__ glyph_cols,
                                 const uint8_t* __restrict__ atlas, int32_t num_glyphs,
                                 int32_t cell_h, int32_t cell_w, int32_t image_size,
                                 int32_t rows, uint8_t background, uint8_t* __restrict__ out) {
  __shared__ int32_t colmap[kChunk];  // glyph << 8 | column in cell, or -1 for background
  const int64_t band = blockIdx.x;
  const int64_t b = band / rows;
  const int32_t y0 = static_cast<int32_t>(band % rows) * cell_h;
  const int32_t h = min(cell_h, image_size - y0);
  const int64_t lo = max<int64_t>(0, row_offsets[band]);
  const int64_t hi = min<int64_t>(num_items, row_offsets[band + 1]);
  uint8_t* dst = out + (b * image_size + y0) * static_cast<int64_t>(image_size);
  const int64_t cell_size = static_cast<int64_t>(cell_h) * cell_w;

  for (int32_t cx = 0; cx < image_size; cx += kChunk) {
    const int32_t span = min(kChunk, image_size - cx);
    for (int32_t i = threadIdx.x; i < span; i += blockDim.x) colmap[i] = -1;
    __syncthreads();
    for (int64_t k = lo + threadIdx.x; k < hi; k += blockDim.x) {
      int32_t g = glyphs[2 * k];
      if (g < 0 || g >= num_glyphs) g = 0;
      const int32_t x = glyphs[2 * k + 1] & 0xFFFF;
      const int32_t cols = glyph_cols[g];
      const int32_t first = cols & 0xFFFF;
      const int32_t width = min(cols >> 16, cell_w - first);
      for (int32_t j = 0; j < width; ++j) {
        const int32_t col = x + j - cx;
        if (col >= 0 && col < span) colmap[col] = g << 8 | (first + j);
      }
    }
    __syncthreads();
    for (int32_t p = threadIdx.x; p < h * span; p += blockDim.x) {
      const int32_t yy = p / span, xx = p - yy * span;
      const int32_t m = colmap[xx];
      dst[static_cast<int64_t>(yy) * image_size + cx + xx] =
          m < 0 ? background : atlas[(m >> 8) * cell_size + yy * cell_w + (m & 0xFF)];
    }
    __syncthreads();
  }
}

at::Tensor rasterize_cuda(const at::Tensor& glyphs, const at::Tensor& row_offsets,
                          const at::Tensor& glyph_cols, const at::Tensor& atlas, int64_t image_size,
                          int64_t background) {
  TORCH_CHECK(atlas.is_cuda() && glyphs.is_cuda() && row_offsets.is_cuda() && glyph_cols.is_cuda(),
              "rasterize on CUDA needs glyphs, row_offsets, glyph_cols and atlas on the GPU");
  TORCH_CHECK(glyphs.device() == atlas.device() && row_offsets.device() == atlas.device(),
              "glyphs, row_offsets and atlas must be on the same GPU");
  const int64_t num_glyphs = check_tables(glyph_cols, atlas, image_size);
  TORCH_CHECK(background >= 0 && background <= 255, "background must be in [0, 255]");
  const int64_t cell_h = atlas.size(1), cell_w = atlas.size(2);
  const int64_t rows = visible_rows(image_size, cell_h);
  TORCH_CHECK(row_offsets.numel() >= 1 && (row_offsets.numel() - 1) % rows == 0,
              "row_offsets must have batch * ", rows, " + 1 entries, got ", row_offsets.numel());
  const int64_t batch = (row_offsets.numel() - 1) / rows;
  check_layout(glyphs, row_offsets, batch * rows);
  const c10::cuda::CUDAGuard guard(atlas.device());
  at::Tensor out = at::empty({batch, image_size, image_size}, atlas.options());
  if (batch == 0) return out;
  const int64_t bands = batch * rows;
  TORCH_CHECK(bands < INT32_MAX, "batch too large");
  rasterize_kernel<<<static_cast<unsigned>(bands), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      glyphs.data_ptr<int32_t>(), glyphs.size(0), row_offsets.data_ptr<int32_t>(),
      glyph_cols.data_ptr<int32_t>(), atlas.data_ptr<uint8_t>(), static_cast<int32_t>(num_glyphs),
      static_cast<int32_t>(cell_h), static_cast<int32_t>(cell_w), static_cast<int32_t>(image_size),
      static_cast<int32_t>(rows), static_cast<uint8_t>(background), out.data_ptr<uint8_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(clippo, CUDA, m) {
  m.impl("rasterize", &rasterize_cuda);
}

}  // namespace clippo
