// Text layout of big_vision's render_unifont, torch-free so C++ tests and every backend share
// it: UTF-8 decoding, ASCII lowercasing, glyph lookup, trimmed widths, character wrapping.
//
// A layout is a list of GlyphItems (glyph, x, y) in row order; rasterizers copy each
// glyph's kept columns (glyph_cols[glyph]: first | width << 16) from the shaded atlas.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace clippo {

constexpr int32_t kReplacementChar = 0xFFFD;
constexpr int32_t kNumCodePoints = 0x110000;

struct GlyphItem {
  int32_t glyph;  // index into the atlas
  int32_t xy;     // x | y << 16 (image_size <= 32767)
};

inline int32_t item_x(int32_t xy) { return xy & 0xFFFF; }
inline int32_t item_y(int32_t xy) { return xy >> 16; }
inline int32_t cols_first(int32_t c) { return c & 0xFFFF; }
inline int32_t cols_width(int32_t c) { return c >> 16; }

// Decodes one code point from s[i..n), advancing i. Ill-formed input becomes U+FFFD, one per
// maximal subpart (Unicode's recommended practice; what ICU, TensorFlow's unicode_decode and
// Python's errors="replace" do): the valid prefix of a broken sequence is consumed, the byte
// that breaks it is not.
inline int32_t decode_utf8(const uint8_t* s, int64_t n, int64_t& i) {
  const uint8_t b0 = s[i];
  if (b0 < 0x80) { i += 1; return b0; }
  int need;
  int32_t cp;
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) { need = 1; cp = b0 & 0x1F; }
  else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 2; cp = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;        // no overlongs
    else if (b0 == 0xED) hi = 0x9F;   // no surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 3; cp = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;        // no overlongs
    else if (b0 == 0xF4) hi = 0x8F;   // nothing above U+10FFFF
  } else { i += 1; return kReplacementChar; }
  int64_t j = i + 1;
  for (int k = 0; k < need; ++k, ++j) {
    if (j >= n) { i = j; return kReplacementChar; }
    const uint8_t b = s[j];
    const uint8_t l = k == 0 ? lo : 0x80, h = k == 0 ? hi : 0xBF;
    if (b < l || b > h) { i = j; return kReplacementChar; }
    cp = (cp << 6) | (b & 0x3F);
  }
  i = j;
  return cp;
}

struct LayoutParams {
  int32_t image_size;  // output is image_size x image_size
  int32_t cell_h;      // row height in pixels
  int64_t max_chars;   // code points kept; <= 0: all
  bool lower;          // ASCII-only lowercasing
  int64_t num_glyphs;  // cmap entries outside [0, num_glyphs) draw the empty glyph
  bool word_wrap = false;  // an extra beyond the reference: see wrap_words
};

constexpr int32_t kGlyphMask = (1 << 23) - 1;
constexpr int32_t kSpace = 1 << 24;
constexpr int32_t kNewline = 1 << 25;

// Word wrap (TextRenderer(word_wrap=True); not in the reference): rows are filled greedily
// up to image_size columns; a word (a run of glyphs other than U+0020 and "\n") that does
// not fit in the rest of a row starts the next one, and a word wider than a row is broken
// between glyphs. "\n" starts a new row and draws nothing; spaces where a row was wrapped
// are dropped.
template <typename Emit>
inline void wrap_words(const std::vector<int32_t>& glyphs, const int32_t* glyph_cols,
                       const LayoutParams& p, int32_t rows, Emit&& emit) {
  const auto width = [&](int32_t tagged) { return cols_width(glyph_cols[tagged & kGlyphMask]); };
  int32_t row = 0, x = 0;
  bool wrapped = false;  // the current row began because the previous one was full
  const auto next_row = [&](bool wrap) { ++row; x = 0; wrapped = wrap; };
  const size_t n = glyphs.size();
  for (size_t i = 0; i < n && row < rows;) {
    const int32_t tagged = glyphs[i];
    if (tagged & kNewline) { next_row(false); ++i; continue; }
    if (tagged & kSpace) {
      const int32_t w = width(tagged);
      if (x == 0 && wrapped) { ++i; continue; }
      if (x + w > p.image_size) { next_row(true); ++i; continue; }
      if (w > 0) emit(GlyphItem{tagged & kGlyphMask, x | (row * p.cell_h) << 16});
      x += w;
      ++i;
      continue;
    }
    size_t j = i;
    int64_t word = 0;
    while (j < n && !(glyphs[j] & (kSpace | kNewline))) word += width(glyphs[j++]);
    if (x > 0 && x + word > p.image_size) next_row(true);
    for (; i < j && row < rows; ++i) {
      const int32_t w = width(glyphs[i]);
      if (x + w > p.image_size) next_row(true);
      if (row >= rows) break;
      if (w > 0) emit(GlyphItem{glyphs[i] & kGlyphMask, x | (row * p.cell_h) << 16});
      x += w;
      wrapped = false;
    }
    i = j;
  }
}

// Lays out one string. `glyphs` is scratch space (reused across calls by the caller).
// Calls emit(GlyphItem) for every glyph on a visible row, in order. Returns false if the
// string's widest glyph leaves no room to wrap (image_size <= max width), which the
// reference cannot render either; callers validate this up front.
template <typename Emit>
inline bool layout_string(const uint8_t* s, int64_t n, const int32_t* cmap,
                          const int32_t* glyph_cols, const LayoutParams& p,
                          std::vector<int32_t>& glyphs, Emit&& emit) {
  glyphs.clear();
  int32_t max_width = 0;
  for (int64_t i = 0; i < n && (p.max_chars <= 0 || (int64_t)glyphs.size() < p.max_chars);) {
    int32_t cp = decode_utf8(s, n, i);
    if (p.lower && cp >= 'A' && cp <= 'Z') cp += 'a' - 'A';
    int32_t g = cmap[cp];
    if (g < 0 || g >= p.num_glyphs) g = 0;
    const int32_t w = cols_width(glyph_cols[g]);
    if (w > max_width) max_width = w;
    // glyph ids are < 2^23: the bits above carry what word wrapping needs to know
    glyphs.push_back(g | (cp == ' ' ? kSpace : cp == '\n' ? kNewline : 0));
  }
  if (glyphs.empty()) return true;
  if (max_width >= p.image_size) return false;
  const int32_t rows = (p.image_size + p.cell_h - 1) / p.cell_h;
  if (p.word_wrap) {
    wrap_words(glyphs, glyph_cols, p, rows, emit);
    return true;
  }
  // The reference's wrap: row of letter i = floor(float32(cumsum(width)[i]) / float32(div)).
  const float div = static_cast<float>(p.image_size - max_width);
  int64_t cum = 0;
  int64_t row = -1;
  int32_t x = 0;
  for (const int32_t tagged : glyphs) {
    const int32_t g = tagged & kGlyphMask;
    const int32_t w = cols_width(glyph_cols[g]);
    cum += w;
    const float q = std::floor(static_cast<float>(cum) / div);
    if (q >= static_cast<float>(rows)) break;  // rows only grow; the rest is cut off
    const int64_t r = static_cast<int64_t>(q);
    if (r != row) { row = r; x = 0; }
    if (x < p.image_size && w > 0) {
      emit(GlyphItem{g, x | static_cast<int32_t>(r * p.cell_h) << 16});
    }
    x += w;
  }
  return true;
}

// Copies one glyph's kept columns into a row-major uint8 image (clipped to the image).
// `atlas_end` bounds the atlas: glyphs up to 16 columns wide are copied a row at a time
// with one 16-byte masked blend when the 16 bytes around them are inside the atlas and the
// image row (the bytes outside the mask are written back unchanged).
inline void blit_glyph(uint8_t* img, int32_t image_size, const uint8_t* atlas,
                       const uint8_t* atlas_end, int32_t cell_h, int32_t cell_w,
                       const int32_t* glyph_cols, const GlyphItem& item) {
  const int32_t c = glyph_cols[item.glyph];
  const int32_t first = cols_first(c);
  const int32_t x = item_x(item.xy), y = item_y(item.xy);
  int32_t width = cols_width(c);
  if (x + width > image_size) width = image_size - x;
  const int32_t h = y + cell_h > image_size ? image_size - y : cell_h;
  if (width <= 0 || h <= 0) return;
  const uint8_t* src = atlas + static_cast<int64_t>(item.glyph) * cell_h * cell_w + first;
  uint8_t* dst = img + static_cast<int64_t>(y) * image_size + x;
#if defined(__SSE2__)
  alignas(16) static constexpr uint8_t kMask[32] = {
      0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF};
  if (width <= 16 && x + 16 <= image_size && src + (h - 1) * cell_w + 16 <= atlas_end) {
    // kMask + 16 - width: `width` bytes of 0xFF, then zeros.
    const __m128i mask = _mm_loadu_si128(reinterpret_cast<const __m128i*>(kMask + 16 - width));
    for (int32_t r = 0; r < h; ++r) {
      const __m128i s = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
      const __m128i d = _mm_loadu_si128(reinterpret_cast<const __m128i*>(dst));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst),
                       _mm_or_si128(_mm_and_si128(mask, s), _mm_andnot_si128(mask, d)));
      src += cell_w;
      dst += image_size;
    }
    return;
  }
#endif
  for (int32_t r = 0; r < h; ++r) {
    for (int32_t k = 0; k < width; ++k) dst[k] = src[k];
    src += cell_w;
    dst += image_size;
  }
}

}  // namespace clippo
