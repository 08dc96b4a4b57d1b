// Drawing one text-row band of one image from a layout: the algorithm of the CUDA kernel,
// written once for host and device. The CPU `rasterize` op runs it with one "thread", the
// CUDA kernel with a thread block, so tests of the CPU op exercise the kernel's indexing.
//
// Per band, in chunks of kChunk columns: (1) clear a column map, (2) each glyph of the row
// claims its kept columns (glyph << 8 | column in cell), (3) every pixel of the band is
// written once, row-major, from the map (background where unclaimed). On a GPU, phase 3's
// writes are coalesced; the phases are separated by barriers.
#pragma once
#include <cstdint>

#ifdef __CUDACC__
#define CLIPPO_HD __host__ __device__ __forceinline__
#else
#define CLIPPO_HD inline
#endif

namespace clippo {

constexpr int32_t kBandChunk = 1024;  // columns mapped per pass; bounds the map's size

struct BandArgs {
  const int32_t* glyphs;       // [num_items, 2]: glyph, x | y << 16
  int64_t num_items;
  const int32_t* row_offsets;  // [bands + 1]
  const int32_t* glyph_cols;   // [num_glyphs]: first | width << 16
  const uint8_t* atlas;        // [num_glyphs, cell_h, cell_w]
  int32_t num_glyphs, cell_h, cell_w, image_size, rows;
  uint8_t background;
  uint8_t* out;                // [batch, image_size, image_size]
};

struct Band {
  int64_t lo, hi;  // this band's glyph items
  int32_t y0, h;   // first pixel row and height (the last band may be cut by the bottom)
  uint8_t* dst;    // first pixel of the band
};

CLIPPO_HD Band band_of(const BandArgs& a, int64_t band) {
  Band b;
  const int64_t image = band / a.rows;
  b.y0 = static_cast<int32_t>(band % a.rows) * a.cell_h;
  b.h = a.image_size - b.y0 < a.cell_h ? a.image_size - b.y0 : a.cell_h;
  const int64_t start = a.row_offsets[band], stop = a.row_offsets[band + 1];
  b.lo = start < 0 ? 0 : start;
  b.hi = stop > a.num_items ? a.num_items : stop;
  b.dst = a.out + (image * a.image_size + b.y0) * static_cast<int64_t>(a.image_size);
  return b;
}

CLIPPO_HD void band_clear(int32_t* colmap, int32_t span, int32_t tid, int32_t nthreads) {
  for (int32_t i = tid; i < span; i += nthreads) colmap[i] = -1;
}

CLIPPO_HD void band_claim(const BandArgs& a, const Band& b, int32_t cx, int32_t span,
                          int32_t* colmap, int32_t tid, int32_t nthreads) {
  for (int64_t k = b.lo + tid; k < b.hi; k += nthreads) {
    int32_t g = a.glyphs[2 * k];
    if (g < 0 || g >= a.num_glyphs) g = 0;  // a bad id draws the empty glyph
    const int32_t x = a.glyphs[2 * k + 1] & 0xFFFF;
    const int32_t cols = a.glyph_cols[g];
    const int32_t first = cols & 0xFFFF;
    const int32_t keep = cols >> 16;
    const int32_t width = keep < a.cell_w - first ? keep : a.cell_w - first;
    for (int32_t j = 0; j < width; ++j) {
      const int32_t col = x + j - cx;
      if (col >= 0 && col < span) colmap[col] = g << 8 | (first + j);
    }
  }
}

CLIPPO_HD void band_write(const BandArgs& a, const Band& b, int32_t cx, int32_t span,
                          const int32_t* colmap, int32_t tid, int32_t nthreads) {
  const int64_t cell_size = static_cast<int64_t>(a.cell_h) * a.cell_w;
  for (int32_t p = tid; p < b.h * span; p += nthreads) {
    const int32_t yy = p / span, xx = p - yy * span;
    const int32_t m = colmap[xx];
    b.dst[static_cast<int64_t>(yy) * a.image_size + cx + xx] =
        m < 0 ? a.background : a.atlas[(m >> 8) * cell_size + yy * a.cell_w + (m & 0xFF)];
  }
}

}  // namespace clippo
