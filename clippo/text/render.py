"""TextRenderer: strings to images, pixel-faithful to big_vision's `render_unifont`.

    >>> r = clippo.TextRenderer()                 # GNU Unifont, CLIPPO's defaults
    >>> images = r(["a photo of a cat", "ein Foto einer Katze"])
    >>> images.shape, images.dtype                # torch.Size([2, 3, 224, 224]) torch.uint8

Layout (UTF-8 decoding, lowercasing, trimming, wrapping) runs in C++, parallel over the
batch. On the CPU the glyphs are drawn in the same pass; with device="cuda" the host sends
only the compact layout (glyph ids and positions, from pinned memory, asynchronously) and a
CUDA kernel draws it with the atlas resident on the GPU. Both give the same bytes.

The three channels of the output share one grey plane (as the reference's grayscale_to_rgb):
the tensor is an expanded view with channel stride 0, which saves two thirds of the memory
traffic. Call `.contiguous()` before writing into it in place.
"""
import functools
import operator
import threading

import numpy as np
import torch

from clippo.text import atlas as atlas_lib
from clippo.text.config import RenderConfig

__all__ = ["TextRenderer", "render", "encode_texts"]


def _replace_surrogates(text):
    return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)


def encode_texts(texts, max_chars=None):
    """UTF-8 bytes of a batch back to back, and the int64 [B + 1] offsets of each string.

    str elements are encoded as UTF-8 (a lone surrogate becomes U+FFFD); bytes-like
    elements are taken as they are and decoded by the renderer with U+FFFD for invalid
    bytes. Anything else is a TypeError. With `max_chars`, strings longer than
    4 * max_chars bytes are cut there: no code point that survives truncation is affected.
    """
    texts = texts if isinstance(texts, (list, tuple)) else list(texts)  # may be read twice
    try:
        encoded = [t.encode() for t in texts]
    except (AttributeError, UnicodeEncodeError, TypeError):
        encoded = []
        for i, t in enumerate(texts):
            if isinstance(t, str):
                try:
                    encoded.append(t.encode())
                except UnicodeEncodeError:
                    encoded.append(_replace_surrogates(t).encode())
            elif isinstance(t, (bytes, bytearray, memoryview)):
                encoded.append(bytes(t))
            else:
                raise TypeError(f"texts[{i}] is a {type(t).__name__}; expected str or bytes") from None
    if max_chars:
        limit = 4 * max_chars
        encoded = [e[:limit] if len(e) > limit else e for e in encoded]
    lengths = np.fromiter(map(len, encoded), np.int64, count=len(encoded))
    offsets = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    data = bytearray().join(encoded)
    text = torch.frombuffer(data, dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
    return text, torch.from_numpy(offsets)


def _host_tables(font, upper_font, antialias, cfg):
    """(atlas, cmap, glyph_cols, shaded atlas) as CPU tensors for one font + config."""
    # load_atlas notices a font file that changed; the tables are then cached per atlas
    return _tables_for_atlas(atlas_lib.load_atlas(font, upper_font, cfg.font_size, antialias),
                             cfg)


@functools.lru_cache(maxsize=16)
def _tables_for_atlas(atlas, cfg):
    shaded, cols = atlas_lib.render_tables(atlas, cfg)
    max_width = int((cols >> 16).max())
    if cfg.image_size <= max_width:
        raise ValueError(f"image_size={cfg.image_size} must be larger than the widest glyph "
                         f"({max_width} px) for the text to wrap")
    return atlas, torch.from_numpy(atlas.cmap), torch.from_numpy(cols), torch.from_numpy(shaded)


@functools.lru_cache(maxsize=16)
def _ink_table_for_atlas(atlas, cfg):
    shaded = _tables_for_atlas(atlas, cfg)[3]
    return torch.from_numpy(atlas_lib.ink_table(shaded.numpy(), cfg.background_brightness))


class TextRenderer:
    """Renders batches of strings to uint8 images [B, 3, image_size, image_size].

    Arguments are those of big_vision's `render_unifont` (same names, same defaults):
      font, upper_font: a Unifont .hex (or .hex.gz) file for the BMP and one for the upper
        planes, or a TTF/OTF file for `font` (rendered through FreeType). Default: GNU
        Unifont 15.0.01, shipped with clippo, covering the BMP and the upper planes.
      image_size, font_size, max_chars, background_brightness, text_brightness, lower,
      monospace, spacing, min_width: see clippo.RenderConfig.
      device: where the images are made ("cpu" default, or "cuda[:n]").
    Extras beyond the reference (defaults keep it faithful):
      word_wrap: break rows between words (at U+0020) and at "\n" instead of between
        characters; words wider than a row still break between glyphs.
      antialias: FreeType fonts only: 8-bit coverage instead of 1-bit glyphs.
      channels: 3 (default, grey replicated as the reference) or 1.
      dtype: None (default) for uint8 [0, 255]; a float dtype (torch.float32, float16,
        bfloat16) for model input already in [-1, 1], computed as big_vision's
        value_range: x / 255 * 2 - 1 in float32, then cast.

    Code points without a glyph draw an empty cell; invalid UTF-8 in bytes input draws
    U+FFFD. Control characters are not line breaks: they draw whatever glyph the font has.
    The renderer is immutable and thread-safe; it pickles by reference to its font (for
    spawn-based DataLoader workers) and works in forked workers.
    """

    def __init__(self, font=None, upper_font=None, image_size=224, font_size=16, max_chars=768,
                 background_brightness=127, text_brightness=0, lower=True, monospace=False,
                 spacing=1, min_width=4, device=None, *, word_wrap=False, antialias=False,
                 channels=3, dtype=None):
        self.config = RenderConfig(
            image_size=image_size, font_size=font_size, max_chars=max_chars,
            background_brightness=background_brightness, text_brightness=text_brightness,
            lower=lower, monospace=monospace, spacing=spacing, min_width=min_width,
            word_wrap=word_wrap)
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        if dtype is not None and dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"dtype must be None (uint8) or float32/float16/bfloat16, got {dtype!r}")
        self.dtype = dtype
        self.font = atlas_lib.resolve_font_path(font)
        self.upper_font = atlas_lib.resolve_font_path(upper_font)
        self.antialias = bool(antialias)
        self.channels = channels
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda, got {self.device}")
        if self.device.type == "cuda" and self.device.index is None and torch.cuda.is_available():
            # pin "cuda" to the GPU current now, so later calls from other threads or after
            # torch.cuda.set_device keep drawing where the atlas is
            self.device = torch.device("cuda", torch.cuda.current_device())
        if self.device.type == "cuda":
            from clippo import _ext
            if not _ext.load():
                raise RuntimeError("clippo was built without CUDA kernels; rebuild with "
                                   "CLIPPO_USE_CUDA=1 and torch with CUDA")
            if not torch.cuda.is_available():
                raise RuntimeError("device='cuda' but torch sees no GPU")
        from clippo.text import ops  # loads the compiled extension with a clear error
        self._ops = ops
        self.atlas, self._cmap, self._cols, self._shaded = _host_tables(
            self.font, self.upper_font, self.antialias, self.config)
        self._device_tables = {}
        self._lock = threading.Lock()

    # -- pickling by reference: a worker rebuilds the (cached) tables from the font file
    def __reduce__(self):
        kwargs = dict(self.config.to_dict(), font=self.font, upper_font=self.upper_font,
                      device=str(self.device), antialias=self.antialias, channels=self.channels,
                      dtype=self.dtype)
        return (_rebuild, (kwargs,))

    def __repr__(self):
        c = self.config
        return (f"TextRenderer({self.atlas.source}, image_size={c.image_size}, "
                f"font_size={c.font_size}, max_chars={c.max_chars}, device={self.device})")

    @property
    def cell_height(self):
        return self._shaded.shape[1]

    def _tables_on(self, device):
        tables = self._device_tables.get(device)
        if tables is None:
            with self._lock:
                tables = self._device_tables.get(device)
                if tables is None:
                    tables = (self._cols.to(device), self._shaded.to(device))
                    self._device_tables[device] = tables
        return tables

    def _ink_table(self):
        return _ink_table_for_atlas(self.atlas, self.config)

    def _check_ink_patch_size(self, ink_patch_size):
        if ink_patch_size is None:
            return None
        size = self.config.image_size
        try:
            if isinstance(ink_patch_size, bool):
                raise TypeError
            patch = operator.index(ink_patch_size)
        except TypeError:
            raise ValueError(f"ink_patch_size must be an int dividing image_size={size}, "
                             f"got {ink_patch_size!r}") from None
        if patch < 1 or size % patch:
            raise ValueError(f"ink_patch_size={patch} must divide image_size={size}")
        return patch

    def __call__(self, texts, *, out=None, ink_patch_size=None):
        """Render a list of str/bytes (a single str is a batch of one).

        out: optional preallocated contiguous uint8 tensor [B, S, S] or [B, 1, S, S] on the
        CPU to draw into; reusing one buffer across calls skips the page faults of fresh
        memory, the largest cost of rendering on the CPU. The result is a view of it.
        ink_patch_size: an int p dividing image_size: return (images, ink), where ink is a
        bool tensor [B, (S // p) ** 2] on the images' device, True for each p x p patch (in
        row-major order, a ViT's token order) holding a pixel != background_brightness. It
        is computed from the layout and a per-glyph ink table, not from the pixels, and
        equals a scan of the images; with text_brightness == background_brightness nothing
        is ink.
        """
        patch = self._check_ink_patch_size(ink_patch_size)
        if isinstance(texts, (str, bytes, bytearray, memoryview)):
            texts = [texts]
        elif not hasattr(texts, "__len__"):
            texts = list(texts)
        c = self.config
        text, offsets = encode_texts(texts, c.max_chars)
        max_chars = c.max_chars or 0
        if out is not None:
            if self.device.type != "cpu":
                raise ValueError("out= is supported for CPU renderers only")
            if self.dtype is not None:
                raise ValueError("out= draws uint8 pixels; it cannot be combined with dtype=")
            if not isinstance(out, torch.Tensor) or out.dtype != torch.uint8 or out.device.type != "cpu":
                raise TypeError("out must be a CPU torch.uint8 tensor")
            shape = (len(texts), c.image_size, c.image_size)
            if tuple(out.shape) not in (shape, (shape[0], 1) + shape[1:]) or not out.is_contiguous():
                raise ValueError(f"out must be contiguous with shape [B, S, S] or [B, 1, S, S] = "
                                 f"{list(shape)}, got {list(out.shape)}")
            if patch is None:
                gray = self._ops.render_text_into(text, offsets, self._cmap, self._cols,
                                                  self._shaded, c.image_size, max_chars, c.lower,
                                                  c.background_brightness, out.view(shape),
                                                  c.word_wrap)
            else:
                ink = torch.empty((len(texts), (c.image_size // patch) ** 2), dtype=torch.bool)
                gray, ink = self._ops.render_text_ink_into(
                    text, offsets, self._cmap, self._cols, self._shaded, self._ink_table(),
                    c.image_size, max_chars, c.lower, c.background_brightness, patch,
                    out.view(shape), ink, c.word_wrap)
        elif self.device.type == "cpu":
            if patch is None:
                gray = self._ops.render_text(text, offsets, self._cmap, self._cols, self._shaded,
                                             c.image_size, max_chars, c.lower,
                                             c.background_brightness, c.word_wrap)
            else:
                gray, ink = self._ops.render_text_ink(
                    text, offsets, self._cmap, self._cols, self._shaded, self._ink_table(),
                    c.image_size, max_chars, c.lower, c.background_brightness, patch,
                    c.word_wrap)
        else:
            glyphs, rows = self._ops.layout_text(text, offsets, self._cmap, self._cols,
                                                 c.image_size, self.cell_height, max_chars,
                                                 c.lower, pin_memory=True, word_wrap=c.word_wrap)
            if patch is not None:  # the host layout's mask: the same bits as the CPU render's
                ink = self._ops.patch_ink(glyphs, rows, self._cols, self._ink_table(),
                                          c.image_size, patch, pin_memory=True)
                ink = ink.to(self.device, non_blocking=True)
            cols, shaded = self._tables_on(self.device)
            gray = self._ops.rasterize(glyphs.to(self.device, non_blocking=True),
                                       rows.to(self.device, non_blocking=True), cols, shaded,
                                       c.image_size, c.background_brightness)
        gray = gray.unsqueeze(1)
        if self.dtype is not None:  # big_vision's value_range(-1, 1), in its order of operations
            gray = gray.to(torch.float32).div_(255).mul_(2).sub_(1).to(self.dtype)
        if self.channels == 3:
            gray = gray.expand(-1, 3, -1, -1)
        return gray if patch is None else (gray, ink)


def _rebuild(kwargs):
    return TextRenderer(**kwargs)


@functools.lru_cache(maxsize=8)
def _cached_renderer(items):
    return TextRenderer(**dict(items))


def render(texts, *, ink_patch_size=None, **kwargs):
    """One call: `render(texts, **TextRenderer kwargs)`; renderers are cached per kwargs.
    With ink_patch_size, returns (images, ink) as TextRenderer.__call__ does."""
    return _cached_renderer(tuple(sorted(kwargs.items())))(texts, ink_patch_size=ink_patch_size)
