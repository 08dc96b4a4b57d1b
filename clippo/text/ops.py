"""Typed wrappers over the rasterizer's torch ops (torch.ops.clippo.*) and their fake kernels.

The fake (meta) kernels give shapes without running anything, so the ops can appear in
torch.compile graphs and be checked with torch.library.opcheck.
"""
import torch

from clippo import _ext

_ext.load()


def render_text(text, offsets, cmap, glyph_cols, atlas, image_size, max_chars, lower, background,
                word_wrap=False):
    """Layout + rasterization on the CPU in one pass: uint8 [B, S, S]."""
    return torch.ops.clippo.render_text.default(text, offsets, cmap, glyph_cols, atlas, image_size,
                                                max_chars, lower, background, word_wrap)


def render_text_into(text, offsets, cmap, glyph_cols, atlas, image_size, max_chars, lower,
                     background, out, word_wrap=False):
    """render_text into a preallocated contiguous uint8 [B, S, S] `out`."""
    torch.ops.clippo.render_text_into.default(text, offsets, cmap, glyph_cols, atlas, image_size,
                                              max_chars, lower, background, out, word_wrap)
    return out


def layout_text(text, offsets, cmap, glyph_cols, image_size, cell_h, max_chars, lower,
                pin_memory=False, word_wrap=False):
    """The layout alone (CPU): glyphs int32 [n, 2], row_offsets int32 [B * rows + 1]."""
    return torch.ops.clippo.layout_text.default(text, offsets, cmap, glyph_cols, image_size,
                                                cell_h, max_chars, lower, pin_memory, word_wrap)


def rasterize(glyphs, row_offsets, glyph_cols, atlas, image_size, background):
    """Draw a layout where the atlas lives (CPU or CUDA): uint8 [B, S, S]."""
    return torch.ops.clippo.rasterize.default(glyphs, row_offsets, glyph_cols, atlas, image_size,
                                              background)


def render_text_ink(text, offsets, cmap, glyph_cols, atlas, ink_rows, image_size, max_chars, lower,
                    background, patch_size, word_wrap=False):
    """render_text and its patch ink mask: (uint8 [B, S, S], bool [B, (S // patch_size)**2])."""
    return torch.ops.clippo.render_text_ink.default(text, offsets, cmap, glyph_cols, atlas,
                                                    ink_rows, image_size, max_chars, lower,
                                                    background, patch_size, word_wrap)


def render_text_ink_into(text, offsets, cmap, glyph_cols, atlas, ink_rows, image_size, max_chars,
                         lower, background, patch_size, out, ink, word_wrap=False):
    """render_text_ink into preallocated `out` uint8 [B, S, S] and `ink` bool [B, P]."""
    torch.ops.clippo.render_text_ink_into.default(text, offsets, cmap, glyph_cols, atlas,
                                                  ink_rows, image_size, max_chars, lower,
                                                  background, patch_size, out, ink, word_wrap)
    return out, ink


def patch_ink(glyphs, row_offsets, glyph_cols, ink_rows, image_size, patch_size, pin_memory=False):
    """The patch ink mask of a host layout (what `rasterize` draws): bool [B, P]."""
    return torch.ops.clippo.patch_ink.default(glyphs, row_offsets, glyph_cols, ink_rows,
                                              image_size, patch_size, pin_memory)


def empty_cache():
    """Free the cached output blocks of CPU rendering (kept for reuse by later batches)."""
    torch.ops.clippo.empty_image_cache.default()


def _rows(image_size, cell_h):
    return -(-image_size // cell_h)


@torch.library.register_fake("clippo::render_text")
def _render_text_fake(text, offsets, cmap, glyph_cols, atlas, image_size, max_chars, lower,
                      background, word_wrap=False):
    return text.new_empty((offsets.shape[0] - 1, image_size, image_size), dtype=torch.uint8)


@torch.library.register_fake("clippo::render_text_into")
def _render_text_into_fake(text, offsets, cmap, glyph_cols, atlas, image_size, max_chars, lower,
                           background, out, word_wrap=False):
    return None


@torch.library.register_fake("clippo::layout_text")
def _layout_text_fake(text, offsets, cmap, glyph_cols, image_size, cell_h, max_chars, lower,
                      pin_memory, word_wrap=False):
    n = torch.library.get_ctx().new_dynamic_size()
    rows = (offsets.shape[0] - 1) * _rows(image_size, cell_h) + 1
    return (text.new_empty((n, 2), dtype=torch.int32),
            text.new_empty((rows,), dtype=torch.int32))


@torch.library.register_fake("clippo::rasterize")
def _rasterize_fake(glyphs, row_offsets, glyph_cols, atlas, image_size, background):
    batch = (row_offsets.shape[0] - 1) // _rows(image_size, atlas.shape[1])
    return atlas.new_empty((batch, image_size, image_size))


def _patches(image_size, patch_size):
    return (image_size // patch_size) ** 2


@torch.library.register_fake("clippo::render_text_ink")
def _render_text_ink_fake(text, offsets, cmap, glyph_cols, atlas, ink_rows, image_size, max_chars,
                          lower, background, patch_size, word_wrap=False):
    batch = offsets.shape[0] - 1
    return (text.new_empty((batch, image_size, image_size), dtype=torch.uint8),
            text.new_empty((batch, _patches(image_size, patch_size)), dtype=torch.bool))


@torch.library.register_fake("clippo::render_text_ink_into")
def _render_text_ink_into_fake(text, offsets, cmap, glyph_cols, atlas, ink_rows, image_size,
                               max_chars, lower, background, patch_size, out, ink,
                               word_wrap=False):
    return None


@torch.library.register_fake("clippo::patch_ink")
def _patch_ink_fake(glyphs, row_offsets, glyph_cols, ink_rows, image_size, patch_size,
                    pin_memory=False):
    batch = (row_offsets.shape[0] - 1) // _rows(image_size, ink_rows.shape[1])
    return glyphs.new_empty((batch, _patches(image_size, patch_size)), dtype=torch.bool)
