// CUDA rasterizer: draws a host-computed layout with an atlas resident on the GPU.
//
// One thread block per (image, text row) band, running render/raster_band.h: the column
// map lives in shared memory, every pixel is written once with coalesced stores (no
// background memset pass).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "checks.h"
#include "render/raster_band.h"
#include "render/render.h"

namespace clippo {
namespace {

constexpr int kThreads = 256;

__global__ void rasterize_kernel(const BandArgs args) {
  __shared__ ColumnKey colmap[kBandChunk];
  const Band band = band_of(args, blockIdx.x);
  for (int32_t cx = 0; cx < args.image_size; cx += kBandChunk) {
    const int32_t span = min(kBandChunk, args.image_size - cx);
    band_clear(colmap, span, threadIdx.x, blockDim.x);
    __syncthreads();
    band_claim(args, band, cx, span, colmap, threadIdx.x, blockDim.x);
    __syncthreads();
    band_write(args, band, cx, span, colmap, threadIdx.x, blockDim.x);
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
  const BandArgs args{glyphs.data_ptr<int32_t>(), glyphs.size(0), row_offsets.data_ptr<int32_t>(),
                      glyph_cols.data_ptr<int32_t>(), atlas.data_ptr<uint8_t>(),
                      static_cast<int32_t>(num_glyphs), static_cast<int32_t>(cell_h),
                      static_cast<int32_t>(cell_w), static_cast<int32_t>(image_size),
                      static_cast<int32_t>(rows), static_cast<uint8_t>(background),
                      out.data_ptr<uint8_t>()};
  rasterize_kernel<<<static_cast<unsigned>(bands), kThreads, 0,
                     c10::cuda::getCurrentCUDAStream()>>>(args);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(clippo, CUDA, m) {
  m.impl("rasterize", &rasterize_cuda);
}

}  // namespace clippo
