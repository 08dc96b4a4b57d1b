// Host-side entry points of the text rasterizer, shared by the CPU and CUDA files.
#pragma once
#include <torch/types.h>

namespace clippo {

// Checks the tables of a renderer (atlas [G, h, w] uint8, glyph_cols [G] int32) and
// returns the number of glyphs.
int64_t check_tables(const at::Tensor& glyph_cols, const at::Tensor& atlas, int64_t image_size);

// Checks a layout (glyphs [n, 2] int32, row_offsets [bands + 1] int32) against its tables.
void check_layout(const at::Tensor& glyphs, const at::Tensor& row_offsets, int64_t bands);

// A fresh uint8 [batch, image_size, image_size] CPU tensor for outputs (render/image_pool.cpp).
at::Tensor empty_images(int64_t batch, int64_t image_size);

// Number of text rows that can be (partly) visible.
inline int64_t visible_rows(int64_t image_size, int64_t cell_h) {
  return (image_size + cell_h - 1) / cell_h;
}

}  // namespace clippo
