// C++-level tests of the torch-free layout core (csrc/render/layout.h): UTF-8 decoding and
// the reference's trimming/wrapping on a tiny hand-made atlas; and of the band rasterizer
// (csrc/render/raster_band.h) under every order of its threads; patch ink masks from the layout
// (csrc/render/ink.h) against a scan of the drawn pixels. Built by CMakeLists.txt.
#include <algorithm>
#include <cstdio>
#include <numeric>
#include <string>
#include <vector>

#include "render/ink.h"
#include "render/layout.h"
#include "render/raster_band.h"

using namespace clippo;

static int failures = 0, checks = 0;
#define EXPECT_EQ(a, b)                                                                   \
  do {                                                                                    \
    ++checks;                                                                             \
    const long long _a = (a), _b = (b);                                                   \
    if (_a != _b) {                                                                       \
      ++failures;                                                                         \
      std::printf("%s:%d: %s == %lld, expected %lld\n", __FILE__, __LINE__, #a, _a, _b); \
    }                                                                                     \
  } while (0)

static std::vector<int32_t> decode_all(const std::string& s) {
  std::vector<int32_t> out;
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  for (int64_t i = 0; i < (int64_t)s.size();) out.push_back(decode_utf8(p, s.size(), i));
  return out;
}

static void test_utf8() {
  auto v = decode_all("a\xC3\xA9\xE4\xB8\xAD\xF0\x9F\x98\x80");  // a é 中 😀
  EXPECT_EQ(v.size(), 4);
  EXPECT_EQ(v[0], 'a');
  EXPECT_EQ(v[1], 0xE9);
  EXPECT_EQ(v[2], 0x4E2D);
  EXPECT_EQ(v[3], 0x1F600);
  // Surrogate encoded in UTF-8: ED is a valid lead but A0 is not allowed after it, so each
  // byte is its own maximal subpart: three U+FFFD.
  v = decode_all("\xED\xA0\x80");
  EXPECT_EQ(v.size(), 3);
  EXPECT_EQ(v[0], kReplacementChar);
  // A truncated 3-byte sequence is one U+FFFD, and the next ASCII byte survives.
  v = decode_all("\xE4\xB8z");
  EXPECT_EQ(v.size(), 2);
  EXPECT_EQ(v[0], kReplacementChar);
  EXPECT_EQ(v[1], 'z');
  // Overlong (C0 80), out of range (F5), lone continuation (80): one U+FFFD per byte.
  v = decode_all("\xC0\x80\xF5\x80");
  EXPECT_EQ(v.size(), 4);
  // Truncated at the end of the string.
  v = decode_all("\xF0\x9F\x98");
  EXPECT_EQ(v.size(), 1);
  EXPECT_EQ(v[0], kReplacementChar);
  // Largest code point and the first above it.
  v = decode_all("\xF4\x8F\xBF\xBF\xF4\x90\x80\x80");
  EXPECT_EQ(v[0], 0x10FFFF);
  EXPECT_EQ(v.size(), 5);
}

static void test_layout() {
  // Glyph 0 empty (kept width 4), glyph 1 width 5, glyph 2 width 9.
  std::vector<int32_t> cmap(kNumCodePoints, 0);
  cmap['a'] = 1;
  cmap['w'] = 2;
  std::vector<int32_t> cols = {0 | 4 << 16, 1 | 5 << 16, 0 | 9 << 16};
  LayoutParams p{32, 16, 0, true, 3};
  std::vector<int32_t> scratch;
  std::vector<GlyphItem> items;
  auto run = [&](const std::string& s) {
    items.clear();
    return layout_string(reinterpret_cast<const uint8_t*>(s.data()), s.size(), cmap.data(),
                         cols.data(), p, scratch, [&](const GlyphItem& it) { items.push_back(it); });
  };
  // "aaaaaa": widths 5, max 5, div = 27; cum = 5..30: rows 0,0,0,0,0,1 (30/27 = 1.1).
  EXPECT_EQ(run("aaaaaa"), true);
  EXPECT_EQ(items.size(), 6);
  EXPECT_EQ(item_x(items[4].xy), 20);
  EXPECT_EQ(item_y(items[4].xy), 0);
  EXPECT_EQ(item_x(items[5].xy), 0);
  EXPECT_EQ(item_y(items[5].xy), 16);
  // Uppercase is lowered: "A" draws glyph 1.
  run("A");
  EXPECT_EQ(items[0].glyph, 1);
  // "waw": max 9, div 23; cum 9, 14, 23 -> rows 0, 0, 1.
  run("waw");
  EXPECT_EQ(item_y(items[2].xy), 16);
  EXPECT_EQ(item_x(items[2].xy), 0);
  // Rows past the bottom (2 rows of 16 px in 32) are dropped.
  run(std::string(40, 'a'));
  EXPECT_EQ(items.size(), 10);  // cum 5..50 -> floor(cum/27) < 2 for cum < 54 -> 10 letters
  // max_chars keeps the first code points only.
  p.max_chars = 3;
  run(std::string(40, 'a'));
  EXPECT_EQ(items.size(), 3);
  p.max_chars = 0;
  // A glyph as wide as the image cannot wrap.
  p.image_size = 9;
  EXPECT_EQ(run("w"), false);
  p.image_size = 32;
  // Out-of-range cmap entries draw the empty glyph.
  cmap['z'] = 12345;
  run("z");
  EXPECT_EQ(items[0].glyph, 0);
}

static void test_word_wrap() {
  // Glyph 1 ('a') width 5, glyph 3 (' ') width 4; image 32 x 32: 2 rows of 16.
  std::vector<int32_t> cmap(kNumCodePoints, 0);
  cmap['a'] = 1;
  cmap[' '] = 3;
  std::vector<int32_t> cols = {0 | 4 << 16, 0 | 5 << 16, 0 | 9 << 16, 0 | 4 << 16};
  LayoutParams p{32, 16, 0, true, 4, true};
  std::vector<int32_t> scratch;
  std::vector<GlyphItem> items;
  auto run = [&](const std::string& s) {
    items.clear();
    layout_string(reinterpret_cast<const uint8_t*>(s.data()), s.size(), cmap.data(), cols.data(),
                  p, scratch, [&](const GlyphItem& it) { items.push_back(it); });
  };
  // "aaa aaa": 15 + 4 + 15 = 34 > 32, so the second word moves to row 1, at x = 0, and the
  // space that ends row 0 is drawn (it fits: 15 + 4 = 19).
  run("aaa aaa");
  EXPECT_EQ(items.size(), 7);
  EXPECT_EQ(item_x(items[4].xy), 0);
  EXPECT_EQ(item_y(items[4].xy), 16);
  EXPECT_EQ(item_x(items[3].xy), 15);
  // "\n" breaks the row and draws nothing.
  run("a\na");
  EXPECT_EQ(items.size(), 2);
  EXPECT_EQ(item_y(items[1].xy), 16);
  EXPECT_EQ(item_x(items[1].xy), 0);
  // A word wider than a row (8 x 5 = 40 > 32) breaks between glyphs: 6 on row 0 (30 px).
  run("aaaaaaaa");
  EXPECT_EQ(items.size(), 8);
  EXPECT_EQ(item_y(items[5].xy), 0);
  EXPECT_EQ(item_y(items[6].xy), 16);
  // Spaces where a row wraps are dropped: 6 a's fill row 0 (30), the spaces do not fit.
  run("aaaaaa   a");
  EXPECT_EQ(items.size(), 7);
  EXPECT_EQ(item_x(items[6].xy), 0);
  EXPECT_EQ(item_y(items[6].xy), 16);
  // Rows past the bottom (2 rows of 16 px in 32) are dropped.
  run("a\na\na\na");
  EXPECT_EQ(items.size(), 2);
}

static void test_band_overlap_any_thread_order() {
  // One 2-pixel-tall band of a 12-pixel-wide image, 3 glyphs of 4x2 cells whose pixel is
  // 10 * glyph + column, and 5 glyph items that overlap. Each item is claimed by its own
  // "thread"; in every order of the threads the picture is the glyphs copied in layout
  // order, later over earlier.
  const int32_t S = 12, H = 2, W = 4, G = 3;
  std::vector<uint8_t> atlas(G * H * W);
  for (int32_t g = 0; g < G; ++g)
    for (int32_t y = 0; y < H; ++y)
      for (int32_t x = 0; x < W; ++x) atlas[(g * H + y) * W + x] = static_cast<uint8_t>(10 * g + x);
  const std::vector<int32_t> cols = {0 | 4 << 16, 1 | 3 << 16, 0 | 4 << 16};  // glyph 1 keeps 1..3
  const std::vector<int32_t> glyphs = {1, 0, 2, 1, 1, 2, 2, 2, 1, 9};  // (glyph, x) pairs
  const int32_t n = static_cast<int32_t>(glyphs.size() / 2);
  const std::vector<int32_t> row_offsets = {0, n};
  // By hand, items in layout order, later over earlier (B: background):
  //   (1, 0): x 0..2 = 11 12 13        (2, 1): x 1..4 = 20 21 22 23
  //   (1, 2): x 2..4 = 11 12 13        (2, 2): x 2..5 = 20 21 22 23      (1, 9): x 9..11
  const int B = 200;
  const std::vector<int> want = {11, 20, 20, 21, 22, 23, B, B, B, 11, 12, 13};
  std::vector<uint8_t> out(S * S);
  const BandArgs a{glyphs.data(), n, row_offsets.data(), cols.data(), atlas.data(), G, H, W, S,
                   1, B, out.data()};
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  int orders = 0;
  do {
    std::fill(out.begin(), out.end(), 0);
    std::vector<ColumnKey> colmap(S);
    const Band b = band_of(a, 0);
    band_clear(colmap.data(), S, 0, 1);
    for (int32_t tid : order) band_claim(a, b, 0, S, colmap.data(), tid, n);
    band_write(a, b, 0, S, colmap.data(), 0, 1);
    int bad = 0;
    for (int32_t y = 0; y < H; ++y)
      for (int32_t x = 0; x < S; ++x) bad += out[y * S + x] != want[x];
    EXPECT_EQ(bad, 0);
    ++orders;
  } while (std::next_permutation(order.begin(), order.end()));
  EXPECT_EQ(orders, 120);
}

// Random atlases (cells with blank rows and columns, pixels equal to the background inside
// the ink's extent), random strings, both wraps, every patch size dividing the image: the mask
// from the layout equals a scan of the image blit_glyph draws, patch by patch.
static void test_ink_masks_equal_pixel_scan(int32_t cell_h, int32_t cell_w) {
  uint32_t seed = 12345u + static_cast<uint32_t>(cell_w);
  auto rnd = [&](uint32_t n) { seed = seed * 1664525u + 1013904223u; return (seed >> 8) % n; };
  const int32_t G = 7;
  const uint8_t bg = 100;
  std::vector<uint8_t> atlas(static_cast<size_t>(G) * cell_h * cell_w, bg);
  std::vector<int32_t> cols(G);
  const int32_t words = (cell_w + 63) / 64;
  std::vector<uint64_t> ink_rows(static_cast<size_t>(G) * cell_h * words, 0);
  for (int32_t g = 1; g < G; ++g) {  // glyph 0 stays empty
    for (int32_t i = 0; i < cell_h * cell_w; ++i) {
      if (rnd(100) < 12) atlas[g * cell_h * cell_w + i] = static_cast<uint8_t>(rnd(2) ? 0 : 250);
    }
  }
  for (int32_t g = 0; g < G; ++g) {
    const int32_t first = static_cast<int32_t>(rnd(cell_w / 2));
    const int32_t width = 1 + static_cast<int32_t>(rnd(cell_w - first));
    cols[g] = first | width << 16;
    for (int32_t r = 0; r < cell_h; ++r)
      for (int32_t c = 0; c < cell_w; ++c)
        if (atlas[(g * cell_h + r) * cell_w + c] != bg)
          ink_rows[(g * cell_h + r) * words + c / 64] |= uint64_t{1} << (c % 64);
  }
  std::vector<int32_t> cmap(kNumCodePoints, 0);
  for (int32_t g = 0; g < G; ++g) cmap['a' + g] = g;
  cmap[' '] = 1;
  std::vector<int32_t> scratch;
  int mismatches = 0, inked = 0, blank = 0;
  for (const int32_t S : {cell_w + 1, 2 * cell_w + 6, 96, 210}) {
    for (const bool wrap : {false, true}) {
      const LayoutParams p{S, cell_h, 0, false, G, wrap};
      for (int trial = 0; trial < 6; ++trial) {
        std::string s;
        const uint32_t n = rnd(4 * S / cell_w + 8);
        for (uint32_t i = 0; i < n; ++i) s += static_cast<char>(rnd(5) == 0 ? ' ' : 'a' + rnd(G));
        std::vector<GlyphItem> items;
        layout_string(reinterpret_cast<const uint8_t*>(s.data()), s.size(), cmap.data(),
                      cols.data(), p, scratch, [&](const GlyphItem& it) { items.push_back(it); });
        std::vector<uint8_t> img(static_cast<size_t>(S) * S, bg);
        for (const auto& it : items)
          blit_glyph(img.data(), S, atlas.data(), atlas.data() + atlas.size(), cell_h, cell_w,
                     cols.data(), it);
        for (int32_t patch = 1; patch <= S; ++patch) {
          if (S % patch) continue;
          const int32_t grid = S / patch;
          const InkTable t{ink_rows.data(), words, cell_h, S, patch, grid};
          std::vector<uint8_t> mask(static_cast<size_t>(grid) * grid, 0);
          for (const auto& it : items) mark_item_ink(mask.data(), t, cols.data(), it);
          for (int32_t py = 0; py < grid; ++py) {
            for (int32_t px = 0; px < grid; ++px) {
              bool any = false;
              for (int32_t y = py * patch; y < (py + 1) * patch && !any; ++y)
                for (int32_t x = px * patch; x < (px + 1) * patch; ++x)
                  if (img[y * S + x] != bg) { any = true; break; }
              mismatches += any != (mask[py * grid + px] != 0);
              (any ? inked : blank) += 1;
            }
          }
        }
      }
    }
  }
  EXPECT_EQ(mismatches, 0);
  EXPECT_EQ(inked > 1000 && blank > 1000, 1);  // both kinds of patch were exercised
}

static void test_any_bit_in() {
  const uint64_t w[2] = {uint64_t{1} << 63, 1};
  EXPECT_EQ(any_bit_in(w, 0, 63), 0);
  EXPECT_EQ(any_bit_in(w, 63, 64), 1);
  EXPECT_EQ(any_bit_in(w, 64, 65), 1);
  EXPECT_EQ(any_bit_in(w, 65, 128), 0);
  EXPECT_EQ(any_bit_in(w, 0, 128), 1);
}

int main() {
  test_utf8();
  test_layout();
  test_word_wrap();
  test_band_overlap_any_thread_order();
  test_any_bit_in();
  test_ink_masks_equal_pixel_scan(16, 16);
  test_ink_masks_equal_pixel_scan(9, 40);
  test_ink_masks_equal_pixel_scan(12, 70);   // two 64-bit words per row
  test_ink_masks_equal_pixel_scan(5, 256);   // four
  std::printf("%d passed, %d failed\n", checks - failures, failures);
  return failures ? 1 : 0;
}
