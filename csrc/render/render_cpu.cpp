// CPU text rendering: layout and rasterization, parallel over the batch.
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "checks.h"
#include "render/ink.h"
#include "render/layout.h"
#include "render/parallel.h"
#include "render/raster_band.h"
#include "render/render.h"

namespace clippo {

int64_t check_tables(const at::Tensor& glyph_cols, const at::Tensor& atlas, int64_t image_size) {
  CLIPPO_CHECK_DTYPE(atlas, at::kByte);
  CLIPPO_CHECK_DTYPE(glyph_cols, at::kInt);
  CLIPPO_CHECK_DIM(atlas, 3);
  CLIPPO_CHECK_DIM(glyph_cols, 1);
  TORCH_CHECK(atlas.is_contiguous() && glyph_cols.is_contiguous(),
              "atlas and glyph_cols must be contiguous");
  TORCH_CHECK(atlas.device() == glyph_cols.device(), "atlas and glyph_cols must share a device");
  const int64_t n = atlas.size(0), cell_w = atlas.size(2);
  TORCH_CHECK(n >= 1 && glyph_cols.size(0) == n, "glyph_cols must have one entry per atlas cell (",
              n, "), got ", glyph_cols.size(0));
  TORCH_CHECK(atlas.size(1) >= 1 && cell_w >= 1 && cell_w <= 256,
              "atlas cells must be 1..256 pixels wide, got ", atlas.sizes());
  TORCH_CHECK(n < (1 << 23), "atlas has too many glyphs: ", n);
  TORCH_CHECK(image_size >= 1 && image_size <= 32767, "image_size must be in [1, 32767], got ",
              image_size);
  if (glyph_cols.device().is_cpu()) {  // CUDA tables were checked on the CPU before upload
    // Runs on every call: a branch-free int32 pass the compiler vectorises (an int64 compare
    // stops it), then a search for the culprit only when something is wrong.
    const int32_t* cols = glyph_cols.data_ptr<int32_t>();
    const int32_t cell_w32 = static_cast<int32_t>(cell_w);
    int32_t bad = 0;
    for (int64_t g = 0; g < n; ++g) {  // width < 0 exactly when the packed value is negative
      const int32_t c = cols[g];
      bad |= (c < 0) | (cols_first(c) + cols_width(c) > cell_w32);
    }
    for (int64_t g = 0; bad && g < n; ++g) {
      const int32_t first = cols_first(cols[g]), width = cols_width(cols[g]);
      TORCH_CHECK(width >= 0 && first + width <= cell_w,
                  "glyph_cols[", g, "] keeps columns outside its cell");
    }
  }
  return n;
}

void check_layout(const at::Tensor& glyphs, const at::Tensor& row_offsets, int64_t bands) {
  CLIPPO_CHECK_DTYPE(glyphs, at::kInt);
  CLIPPO_CHECK_DTYPE(row_offsets, at::kInt);
  CLIPPO_CHECK_DIM(glyphs, 2);
  TORCH_CHECK(glyphs.size(1) == 2, "glyphs must have shape [n, 2], got ", glyphs.sizes());
  TORCH_CHECK(glyphs.is_contiguous() && row_offsets.is_contiguous(),
              "glyphs and row_offsets must be contiguous");
  TORCH_CHECK(row_offsets.dim() == 1 && row_offsets.size(0) == bands + 1,
              "row_offsets must have batch * rows + 1 = ", bands + 1, " entries, got ",
              row_offsets.sizes());
}

namespace {

struct TextBatch {
  const uint8_t* data;
  const int64_t* offsets;
  int64_t size;
  int64_t batch;
};

TextBatch check_text(const at::Tensor& text, const at::Tensor& offsets) {
  CLIPPO_CHECK_CPU(text);
  CLIPPO_CHECK_CPU(offsets);
  CLIPPO_CHECK_DTYPE(text, at::kByte);
  CLIPPO_CHECK_DTYPE(offsets, at::kLong);
  CLIPPO_CHECK_DIM(text, 1);
  CLIPPO_CHECK_DIM(offsets, 1);
  TORCH_CHECK(text.is_contiguous() && offsets.is_contiguous(), "text and offsets must be contiguous");
  TORCH_CHECK(offsets.size(0) >= 1, "offsets must hold batch + 1 entries");
  TextBatch t{text.data_ptr<uint8_t>(), offsets.data_ptr<int64_t>(), text.size(0),
              offsets.size(0) - 1};
  for (int64_t b = 0; b <= t.batch; ++b) {
    TORCH_CHECK(t.offsets[b] >= 0 && t.offsets[b] <= t.size && (b == 0 || t.offsets[b] >= t.offsets[b - 1]),
                "offsets must be non-decreasing and within [0, len(text)]; offsets[", b, "] = ",
                t.offsets[b]);
  }
  return t;
}

void check_cmap(const at::Tensor& cmap) {
  CLIPPO_CHECK_CPU(cmap);
  CLIPPO_CHECK_DTYPE(cmap, at::kInt);
  TORCH_CHECK(cmap.dim() == 1 && cmap.size(0) == kNumCodePoints && cmap.is_contiguous(),
              "cmap must be a contiguous int32 tensor of 0x110000 entries");
}

constexpr int64_t kGrain = 8;  // strings per task: enough work to amortise scheduling

template <typename Fn>
void for_each_string(const TextBatch& t, Fn&& fn) {
  parallel_for(0, t.batch, kGrain, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> scratch;  // decoded glyphs, reused across the strings of a task
    for (int64_t b = begin; b < end; ++b) {
      fn(b, t.data + t.offsets[b], t.offsets[b + 1] - t.offsets[b], scratch);
    }
  });
}

}  // namespace

namespace {

// Checks an ink table (int64 [G, cell_h, words], see render/ink.h) against the atlas tables
// and the patch size; returns the table's view for mark_glyph_ink.
InkTable check_ink_table(const at::Tensor& ink_rows, int64_t num_glyphs, int64_t cell_h,
                         int64_t cell_w, int64_t image_size, int64_t patch_size) {
  CLIPPO_CHECK_CPU(ink_rows);
  CLIPPO_CHECK_DTYPE(ink_rows, at::kLong);
  CLIPPO_CHECK_DIM(ink_rows, 3);
  TORCH_CHECK(ink_rows.is_contiguous(), "ink_rows must be contiguous");
  const int64_t words = (cell_w + 63) / 64;
  TORCH_CHECK(ink_rows.size(0) == num_glyphs && ink_rows.size(1) == cell_h &&
                  ink_rows.size(2) == words && words <= kMaxInkWords,
              "ink_rows must have shape [", num_glyphs, ", ", cell_h, ", ", words,
              "] (glyphs, cell rows, 64-bit words per row), got ", ink_rows.sizes());
  TORCH_CHECK(patch_size >= 1 && image_size % patch_size == 0, "patch_size ", patch_size,
              " must be positive and divide image_size ", image_size);
  return InkTable{reinterpret_cast<const uint64_t*>(ink_rows.data_ptr<int64_t>()),
                  static_cast<int32_t>(words), static_cast<int32_t>(cell_h),
                  static_cast<int32_t>(image_size), static_cast<int32_t>(patch_size),
                  static_cast<int32_t>(image_size / patch_size)};
}

void check_ink_out(const at::Tensor& ink, int64_t batch, int64_t grid) {
  CLIPPO_CHECK_CPU(ink);
  CLIPPO_CHECK_DTYPE(ink, at::kBool);
  TORCH_CHECK(ink.dim() == 2 && ink.size(0) == batch && ink.size(1) == grid * grid &&
                  ink.is_contiguous(),
              "ink must be a contiguous bool tensor of shape [", batch, ", ", grid * grid,
              "], got ", ink.sizes());
}

// The one-pass render; with `ink_rows` defined, also the patch ink mask (render/ink.h).
void render_text_impl(const at::Tensor& text, const at::Tensor& offsets, const at::Tensor& cmap,
                      const at::Tensor& glyph_cols, const at::Tensor& atlas, int64_t image_size,
                      int64_t max_chars, bool lower, int64_t background, at::Tensor& out,
                      bool word_wrap, const at::Tensor* ink_rows, int64_t patch_size,
                      at::Tensor* ink) {
  const TextBatch t = check_text(text, offsets);
  check_cmap(cmap);
  CLIPPO_CHECK_CPU(atlas);
  CLIPPO_CHECK_CPU(out);
  const int64_t num_glyphs = check_tables(glyph_cols, atlas, image_size);
  TORCH_CHECK(background >= 0 && background <= 255, "background must be in [0, 255]");
  CLIPPO_CHECK_DTYPE(out, at::kByte);
  TORCH_CHECK(out.dim() == 3 && out.size(0) == t.batch && out.size(1) == image_size &&
                  out.size(2) == image_size && out.is_contiguous(),
              "out must be a contiguous uint8 tensor of shape [", t.batch, ", ", image_size, ", ",
              image_size, "], got ", out.sizes());
  const int32_t S = static_cast<int32_t>(image_size);
  const int32_t cell_h = static_cast<int32_t>(atlas.size(1)), cell_w = static_cast<int32_t>(atlas.size(2));
  uint8_t* out_ptr = out.data_ptr<uint8_t>();
  const uint8_t* atlas_ptr = atlas.data_ptr<uint8_t>();
  const uint8_t* atlas_end = atlas_ptr + atlas.numel();
  const int32_t* cols = glyph_cols.data_ptr<int32_t>();
  const LayoutParams p{S, cell_h, max_chars, lower, num_glyphs, word_wrap};
  std::atomic<bool> too_narrow{false};
  const int32_t* cm = cmap.data_ptr<int32_t>();
  if (ink_rows == nullptr) {
    for_each_string(t, [&](int64_t b, const uint8_t* s, int64_t n, std::vector<int32_t>& scratch) {
      uint8_t* img = out_ptr + b * S * S;
      std::memset(img, static_cast<int>(background), static_cast<size_t>(S) * S);
      const bool ok = layout_string(s, n, cm, cols, p, scratch, [&](const GlyphItem& item) {
        blit_glyph(img, S, atlas_ptr, atlas_end, cell_h, cell_w, cols, item);
      });
      if (!ok) too_narrow = true;
    });
  } else {
    const InkTable table = check_ink_table(*ink_rows, num_glyphs, cell_h, cell_w, image_size,
                                           patch_size);
    check_ink_out(*ink, t.batch, table.grid);
    uint8_t* ink_ptr = reinterpret_cast<uint8_t*>(ink->data_ptr<bool>());
    const int64_t patches = static_cast<int64_t>(table.grid) * table.grid;
    for_each_string(t, [&](int64_t b, const uint8_t* s, int64_t n, std::vector<int32_t>& scratch) {
      uint8_t* img = out_ptr + b * S * S;
      uint8_t* mask = ink_ptr + b * patches;
      std::memset(img, static_cast<int>(background), static_cast<size_t>(S) * S);
      std::memset(mask, 0, static_cast<size_t>(patches));
      const bool ok = layout_string(s, n, cm, cols, p, scratch, [&](const GlyphItem& item) {
        blit_glyph(img, S, atlas_ptr, atlas_end, cell_h, cell_w, cols, item);
        mark_item_ink(mask, table, cols, item);
      });
      if (!ok) too_narrow = true;
    });
  }
  TORCH_CHECK(!too_narrow, "image_size ", image_size, " is not wider than the widest glyph");
}

}  // namespace

void render_text_into_cpu(const at::Tensor& text, const at::Tensor& offsets, const at::Tensor& cmap,
                          const at::Tensor& glyph_cols, const at::Tensor& atlas, int64_t image_size,
                          int64_t max_chars, bool lower, int64_t background, at::Tensor& out,
                          bool word_wrap) {
  render_text_impl(text, offsets, cmap, glyph_cols, atlas, image_size, max_chars, lower,
                   background, out, word_wrap, nullptr, 0, nullptr);
}

void render_text_ink_into_cpu(const at::Tensor& text, const at::Tensor& offsets,
                              const at::Tensor& cmap, const at::Tensor& glyph_cols,
                              const at::Tensor& atlas, const at::Tensor& ink_rows,
                              int64_t image_size, int64_t max_chars, bool lower,
                              int64_t background, int64_t patch_size, at::Tensor& out,
                              at::Tensor& ink, bool word_wrap) {
  render_text_impl(text, offsets, cmap, glyph_cols, atlas, image_size, max_chars, lower,
                   background, out, word_wrap, &ink_rows, patch_size, &ink);
}

std::tuple<at::Tensor, at::Tensor> render_text_ink_cpu(
    const at::Tensor& text, const at::Tensor& offsets, const at::Tensor& cmap,
    const at::Tensor& glyph_cols, const at::Tensor& atlas, const at::Tensor& ink_rows,
    int64_t image_size, int64_t max_chars, bool lower, int64_t background, int64_t patch_size,
    bool word_wrap) {
  TORCH_CHECK(offsets.dim() == 1 && offsets.size(0) >= 1, "offsets must hold batch + 1 entries");
  TORCH_CHECK(image_size >= 1 && image_size <= 32767, "image_size must be in [1, 32767], got ",
              image_size);
  TORCH_CHECK(patch_size >= 1 && image_size % patch_size == 0, "patch_size ", patch_size,
              " must be positive and divide image_size ", image_size);
  const int64_t batch = offsets.size(0) - 1, grid = image_size / patch_size;
  at::Tensor out = empty_images(batch, image_size);
  at::Tensor ink = at::empty({batch, grid * grid}, at::TensorOptions().dtype(at::kBool));
  render_text_ink_into_cpu(text, offsets, cmap, glyph_cols, atlas, ink_rows, image_size,
                           max_chars, lower, background, patch_size, out, ink, word_wrap);
  return {out, ink};
}

at::Tensor patch_ink_cpu(const at::Tensor& glyphs, const at::Tensor& row_offsets,
                         const at::Tensor& glyph_cols, const at::Tensor& ink_rows,
                         int64_t image_size, int64_t patch_size, bool pin_memory) {
  CLIPPO_CHECK_CPU(glyphs);
  CLIPPO_CHECK_CPU(row_offsets);
  CLIPPO_CHECK_CPU(glyph_cols);
  CLIPPO_CHECK_DTYPE(glyph_cols, at::kInt);
  TORCH_CHECK(glyph_cols.dim() == 1 && glyph_cols.is_contiguous() && glyph_cols.size(0) >= 1,
              "glyph_cols must be a contiguous non-empty 1-D tensor");
  TORCH_CHECK(image_size >= 1 && image_size <= 32767, "image_size must be in [1, 32767], got ",
              image_size);
  CLIPPO_CHECK_DIM(ink_rows, 3);
  const int64_t num_glyphs = glyph_cols.size(0), cell_h = ink_rows.size(1);
  TORCH_CHECK(cell_h >= 1, "ink_rows must have at least one row per glyph");
  const InkTable table = check_ink_table(ink_rows, num_glyphs, cell_h, 64 * ink_rows.size(2),
                                         image_size, patch_size);
  const int32_t* cols = glyph_cols.data_ptr<int32_t>();
  for (int64_t g = 0; g < num_glyphs; ++g) {
    const int32_t first = cols_first(cols[g]), width = cols_width(cols[g]);
    TORCH_CHECK(width >= 0 && first + width <= 64 * table.words,
                "glyph_cols[", g, "] keeps columns outside its ink_rows");
  }
  const int64_t rows = visible_rows(image_size, cell_h);
  TORCH_CHECK(row_offsets.numel() >= 1 && (row_offsets.numel() - 1) % rows == 0,
              "row_offsets must have batch * ", rows, " + 1 entries, got ", row_offsets.numel());
  const int64_t batch = (row_offsets.numel() - 1) / rows;
  check_layout(glyphs, row_offsets, batch * rows);
  const int64_t patches = static_cast<int64_t>(table.grid) * table.grid;
  at::Tensor ink = at::zeros({batch, patches},
                             at::TensorOptions().dtype(at::kBool).pinned_memory(pin_memory));
  uint8_t* ink_ptr = reinterpret_cast<uint8_t*>(ink.data_ptr<bool>());
  const int32_t* gp = glyphs.data_ptr<int32_t>();
  const int32_t* rp = row_offsets.data_ptr<int32_t>();
  const int64_t num_items = glyphs.size(0);
  // What `rasterize` draws: a band's items (its offsets clamped to the layout), at the band's
  // row whatever their y, bad glyph ids as the empty glyph 0.
  parallel_for(0, batch, 64, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t band = b * rows + r;
        const int64_t lo = std::max<int64_t>(rp[band], 0);
        const int64_t hi = std::min<int64_t>(rp[band + 1], num_items);
        for (int64_t k = lo; k < hi; ++k) {
          int32_t g = gp[2 * k];
          if (g < 0 || g >= num_glyphs) g = 0;
          mark_glyph_ink(ink_ptr + b * patches, table, g, cols_first(cols[g]),
                         cols_width(cols[g]), gp[2 * k + 1] & 0xFFFF,
                         static_cast<int32_t>(r * cell_h));
        }
      }
    }
  });
  return ink;
}

at::Tensor render_text_cpu(const at::Tensor& text, const at::Tensor& offsets, const at::Tensor& cmap,
                           const at::Tensor& glyph_cols, const at::Tensor& atlas, int64_t image_size,
                           int64_t max_chars, bool lower, int64_t background, bool word_wrap) {
  TORCH_CHECK(offsets.dim() == 1 && offsets.size(0) >= 1, "offsets must hold batch + 1 entries");
  TORCH_CHECK(image_size >= 1 && image_size <= 32767, "image_size must be in [1, 32767], got ",
              image_size);
  at::Tensor out = empty_images(offsets.size(0) - 1, image_size);
  render_text_into_cpu(text, offsets, cmap, glyph_cols, atlas, image_size, max_chars, lower,
                       background, out, word_wrap);
  return out;
}

std::tuple<at::Tensor, at::Tensor> layout_text_cpu(const at::Tensor& text, const at::Tensor& offsets,
                                                   const at::Tensor& cmap, const at::Tensor& glyph_cols,
                                                   int64_t image_size, int64_t cell_h, int64_t max_chars,
                                                   bool lower, bool pin_memory, bool word_wrap) {
  const TextBatch t = check_text(text, offsets);
  check_cmap(cmap);
  CLIPPO_CHECK_CPU(glyph_cols);
  CLIPPO_CHECK_DTYPE(glyph_cols, at::kInt);
  TORCH_CHECK(glyph_cols.dim() == 1 && glyph_cols.is_contiguous(), "glyph_cols must be a contiguous 1-D tensor");
  TORCH_CHECK(image_size >= 1 && image_size <= 32767, "image_size must be in [1, 32767]");
  TORCH_CHECK(cell_h >= 1 && cell_h <= 32767, "cell_h must be in [1, 32767], got ", cell_h);
  const int64_t num_glyphs = glyph_cols.size(0);
  TORCH_CHECK(num_glyphs >= 1 && num_glyphs < (1 << 23),
              "glyph_cols must have 1 .. 2^23 - 1 entries (glyph 0 is the empty cell), got ", num_glyphs);
  const int32_t* cols = glyph_cols.data_ptr<int32_t>();
  int32_t negative = 0;  // branch-free so it vectorises: this runs on every call
  for (int64_t g = 0; g < num_glyphs; ++g) negative |= cols[g] < 0;
  for (int64_t g = 0; negative && g < num_glyphs; ++g) {
    TORCH_CHECK(cols_width(cols[g]) >= 0, "glyph_cols[", g, "] has a negative width");
  }
  const int64_t rows = visible_rows(image_size, cell_h);
  const LayoutParams p{static_cast<int32_t>(image_size), static_cast<int32_t>(cell_h), max_chars, lower,
                       num_glyphs, word_wrap};
  // Lay out each string into its own list, then pack them: the count per row is only known
  // after layout, and the packing is a cheap copy.
  std::vector<std::vector<GlyphItem>> items(t.batch);
  std::atomic<bool> too_narrow{false};
  const int32_t* cm = cmap.data_ptr<int32_t>();
  for_each_string(t, [&](int64_t b, const uint8_t* s, int64_t n, std::vector<int32_t>& scratch) {
        auto& list = items[b];
        // one allocation per string: at most one item per code point (<= bytes, <= max_chars)
        list.reserve(static_cast<size_t>(p.max_chars > 0 ? std::min(n, p.max_chars) : n));
        if (!layout_string(s, n, cm, cols, p, scratch, [&](const GlyphItem& it) { list.push_back(it); }))
          too_narrow = true;
      });
  TORCH_CHECK(!too_narrow, "image_size ", image_size, " is not wider than the widest glyph");
  std::vector<int64_t> start(t.batch + 1, 0);
  for (int64_t b = 0; b < t.batch; ++b) start[b + 1] = start[b] + static_cast<int64_t>(items[b].size());
  TORCH_CHECK(start[t.batch] < INT32_MAX, "layout too large for one batch");
  auto opts = at::TensorOptions().dtype(at::kInt).pinned_memory(pin_memory);
  at::Tensor glyphs = at::empty({start[t.batch], 2}, opts);
  at::Tensor row_offsets = at::empty({t.batch * rows + 1}, opts);
  int32_t* gp = glyphs.data_ptr<int32_t>();
  int32_t* rp = row_offsets.data_ptr<int32_t>();
  rp[t.batch * rows] = static_cast<int32_t>(start[t.batch]);
  // packing is a copy: threads only pay for themselves from about half a MiB per chunk
  const int64_t bytes_per_string = std::max<int64_t>(1, 8 * start[t.batch] / std::max<int64_t>(t.batch, 1));
  const int64_t pack_grain = std::max<int64_t>(64, (int64_t{1} << 19) / bytes_per_string);
  parallel_for(0, t.batch, pack_grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const auto& list = items[b];
      int32_t k = static_cast<int32_t>(start[b]);
      size_t i = 0;
      for (int64_t r = 0; r < rows; ++r) {
        rp[b * rows + r] = k + static_cast<int32_t>(i);
        while (i < list.size() && item_y(list[i].xy) == r * cell_h) ++i;
      }
      std::memcpy(gp + 2 * start[b], list.data(), list.size() * sizeof(GlyphItem));
    }
  });
  return {glyphs, row_offsets};
}

at::Tensor rasterize_cpu(const at::Tensor& glyphs, const at::Tensor& row_offsets,
                         const at::Tensor& glyph_cols, const at::Tensor& atlas, int64_t image_size,
                         int64_t background) {
  CLIPPO_CHECK_CPU(glyphs);
  CLIPPO_CHECK_CPU(atlas);
  const int64_t num_glyphs = check_tables(glyph_cols, atlas, image_size);
  TORCH_CHECK(background >= 0 && background <= 255, "background must be in [0, 255]");
  const int32_t S = static_cast<int32_t>(image_size);
  const int32_t cell_h = static_cast<int32_t>(atlas.size(1)), cell_w = static_cast<int32_t>(atlas.size(2));
  const int64_t rows = visible_rows(image_size, cell_h);
  TORCH_CHECK((row_offsets.numel() - 1) % rows == 0 && row_offsets.numel() >= 1,
              "row_offsets must have batch * ", rows, " + 1 entries, got ", row_offsets.numel());
  const int64_t batch = (row_offsets.numel() - 1) / rows;
  check_layout(glyphs, row_offsets, batch * rows);
  at::Tensor out = empty_images(batch, S);
  const BandArgs args{glyphs.data_ptr<int32_t>(), glyphs.size(0), row_offsets.data_ptr<int32_t>(),
                      glyph_cols.data_ptr<int32_t>(), atlas.data_ptr<uint8_t>(),
                      static_cast<int32_t>(num_glyphs), cell_h, cell_w, S,
                      static_cast<int32_t>(rows), static_cast<uint8_t>(background),
                      out.data_ptr<uint8_t>()};
  // The CUDA kernel's band algorithm, one band at a time. Claims run as kClaimLanes
  // interleaved "threads", the last first: an order a GPU may take, in which glyphs that
  // overlap (a malformed layout) would come out differently if the result depended on the
  // order of the claims.
  constexpr int32_t kClaimLanes = 2;
  parallel_for(0, batch * rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<ColumnKey> colmap(kBandChunk);
    for (int64_t i = begin; i < end; ++i) {
      const Band band = band_of(args, i);
      for (int32_t cx = 0; cx < S; cx += kBandChunk) {
        const int32_t span = std::min(kBandChunk, S - cx);
        band_clear(colmap.data(), span, 0, 1);
        for (int32_t lane = kClaimLanes - 1; lane >= 0; --lane) {
          band_claim(args, band, cx, span, colmap.data(), lane, kClaimLanes);
        }
        band_write(args, band, cx, span, colmap.data(), 0, 1);
      }
    }
  });
  return out;
}

TORCH_LIBRARY_IMPL(clippo, CPU, m) {
  m.impl("render_text", &render_text_cpu);
  m.impl("render_text_into", &render_text_into_cpu);
  m.impl("layout_text", &layout_text_cpu);
  m.impl("rasterize", &rasterize_cpu);
  m.impl("render_text_ink", &render_text_ink_cpu);
  m.impl("render_text_ink_into", &render_text_ink_into_cpu);
  m.impl("patch_ink", &patch_ink_cpu);
}

}  // namespace clippo
