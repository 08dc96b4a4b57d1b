// clippo._C: op schemas for the text rasterizer. Kernels live beside their backends
// (render/render_cpu.cpp, cuda/render_cuda.cu); importing this module registers them all.
//
// The ops are uint8-in, uint8-out and have no autograd: rendering is not differentiable.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// A module with no methods: importing it loads the library and runs the registrations.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(clippo, m) {
  // text: UTF-8 bytes of the batch back to back; offsets: [B + 1] int64 string boundaries.
  // cmap: int32 [0x110000] code point -> glyph; glyph_cols: int32 [G] first | width << 16;
  // atlas: uint8 [G, cell_h, cell_w] final pixel values. Returns uint8 [B, S, S].
  m.def("render_text(Tensor text, Tensor offsets, Tensor cmap, Tensor glyph_cols, Tensor atlas, "
        "int image_size, int max_chars, bool lower, int background, bool word_wrap=False) -> Tensor");
  // The same into a preallocated out [B, S, S]: reusing one buffer avoids page faults.
  m.def("render_text_into(Tensor text, Tensor offsets, Tensor cmap, Tensor glyph_cols, "
        "Tensor atlas, int image_size, int max_chars, bool lower, int background, "
        "Tensor(a!) out, bool word_wrap=False) -> ()");
  // The layout alone: glyphs int32 [n, 2] (glyph, x | y << 16) and row_offsets int32
  // [B * rows + 1], the start of each text row's glyphs. This is all a GPU needs to draw.
  m.def("layout_text(Tensor text, Tensor offsets, Tensor cmap, Tensor glyph_cols, int image_size, "
        "int cell_h, int max_chars, bool lower, bool pin_memory, bool word_wrap=False) -> (Tensor, Tensor)");
  // Draws a layout with the atlas; runs where the atlas lives (CPU or CUDA).
  m.def("rasterize(Tensor glyphs, Tensor row_offsets, Tensor glyph_cols, Tensor atlas, "
        "int image_size, int background) -> Tensor");
  // Ink masks (render/ink.h): which patch_size x patch_size patches of each image hold a
  // pixel != background, from the layout and ink_rows, int64 [G, cell_h, ceil(cell_w / 64)]
  // (bit c % 64 of word c / 64 of row r of glyph g: atlas[g, r, c] != background).
  // ink: bool [B, (S / patch_size)^2], patches row-major. render_text with its ink mask:
  m.def("render_text_ink(Tensor text, Tensor offsets, Tensor cmap, Tensor glyph_cols, "
        "Tensor atlas, Tensor ink_rows, int image_size, int max_chars, bool lower, "
        "int background, int patch_size, bool word_wrap=False) -> (Tensor, Tensor)");
  m.def("render_text_ink_into(Tensor text, Tensor offsets, Tensor cmap, Tensor glyph_cols, "
        "Tensor atlas, Tensor ink_rows, int image_size, int max_chars, bool lower, "
        "int background, int patch_size, Tensor(a!) out, Tensor(b!) ink, "
        "bool word_wrap=False) -> ()");
  // The ink mask of a host layout from layout_text (what rasterize draws, on any device).
  m.def("patch_ink(Tensor glyphs, Tensor row_offsets, Tensor glyph_cols, Tensor ink_rows, "
        "int image_size, int patch_size, bool pin_memory=False) -> Tensor");
}
