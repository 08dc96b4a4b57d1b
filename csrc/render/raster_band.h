// Drawing one text-row band of one image from a layout: the algorithm of the CUDA kernel,
// written once for host and device. The CPU `rasterize` op runs it with one "thread", the
// CUDA kernel with a thread block, so tests of the CPU op exercise the kernel's indexing.
//
// Per band, in chunks of kBandChunk columns: (1) clear a column map, (2) each glyph of the row
// claims its kept columns, (3) every pixel of the band is written once, row-major, from the
// map (background where unclaimed). On a GPU, phase 3's writes are coalesced; the phases are
// separated by barriers.
//
// Glyphs of a row never overlap in a layout from layout_text, but a layout passed to
// `rasterize` may be malformed. Where glyphs overlap, the one later in the layout wins, as
// when glyphs are copied in order (render_text): a claim is an atomic max of a key that
// leads with the glyph's position in the layout, so the result does not depend on the order
// in which threads run.
#pragma once
#include <cstdint>

#ifdef __CUDACC__
#define CLIPPO_HD __host__ __device__ __forceinline__
#else
#define CLIPPO_HD inline
#endif

namespace clippo {

constexpr int32_t kBandChunk = 1024;  // columns mapped per pass; bounds the map's size

// A column map entry: (layout item + 1) << 32 | glyph << 8 | column in the glyph's cell;
// 0 means unclaimed. Item indices come from int32 row offsets and glyph ids are < 2^23,
// so both halves fit.
using ColumnKey = unsigned long long;

CLIPPO_HD ColumnKey column_key(int64_t item, int32_t glyph, int32_t column) {
  return static_cast<ColumnKey>(item + 1) << 32 |
         static_cast<uint32_t>(glyph << 8 | column);
}

CLIPPO_HD void claim_column(ColumnKey* slot, ColumnKey key) {
#ifdef __CUDA_ARCH__
  atomicMax(slot, key);
#else
  if (key > *slot) *slot = key;
#endif
}

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

CLIPPO_HD void band_clear(ColumnKey* colmap, int32_t span, int32_t tid, int32_t nthreads) {
  for (int32_t i = tid; i < span; i += nthreads) colmap[i] = 0;
}

CLIPPO_HD void band_claim(const BandArgs& a, const Band& b, int32_t cx, int32_t span,
                          ColumnKey* colmap, int32_t tid, int32_t nthreads) {
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
      if (col >= 0 && col < span) claim_column(&colmap[col], column_key(k, g, first + j));
    }
  }
}

CLIPPO_HD void band_write(const BandArgs& a, const Band& b, int32_t cx, int32_t span,
                          const ColumnKey* colmap, int32_t tid, int32_t nthreads) {
  const int64_t cell_size = static_cast<int64_t>(a.cell_h) * a.cell_w;
  for (int32_t p = tid; p < b.h * span; p += nthreads) {
    const int32_t yy = p / span, xx = p - yy * span;
    const ColumnKey key = colmap[xx];
    const uint32_t m = static_cast<uint32_t>(key);  // glyph << 8 | column
    b.dst[static_cast<int64_t>(yy) * a.image_size + cx + xx] =
        key == 0 ? a.background : a.atlas[(m >> 8) * cell_size + yy * a.cell_w + (m & 0xFF)];
  }
}

}  // namespace clippo
