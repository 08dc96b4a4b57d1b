"""The render parameters and their defaults: the one place they are written down.

Names and defaults are those of big_vision's `render_unifont` op with the CLIPPO config
(image_size=224), so a default TextRenderer is pixel-faithful to the reference.
"""
import dataclasses
from typing import Optional


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


@dataclasses.dataclass(frozen=True)
class RenderConfig:
    image_size: int = 224            # output is image_size x image_size
    font_size: int = 16              # cell height in pixels (Unifont cells are 16x16)
    max_chars: Optional[int] = 768   # code points kept per string; None or 0: all
    background_brightness: int = 127  # grey level of the background, 0..255
    text_brightness: int = 0          # grey level of ink, 0..255
    lower: bool = True               # ASCII-only lowercasing, as tf.strings.lower
    monospace: bool = False          # keep full cells instead of trimming to the ink
    spacing: int = 1                 # columns kept on each side of the ink
    min_width: int = 4               # narrowest trimmed cell (keeps spaces visible)
    # beyond the reference (the default keeps it faithful): break rows between words, and
    # at "\n", instead of the reference's character-level wrap
    word_wrap: bool = False

    def __post_init__(self):
        for name in ("image_size", "font_size"):
            v = getattr(self, name)
            if not _is_int(v) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.image_size > 32767:
            raise ValueError(f"image_size must be at most 32767, got {self.image_size}")
        if self.max_chars is not None and (not _is_int(self.max_chars) or self.max_chars < 0):
            raise ValueError(f"max_chars must be None or an int >= 0, got {self.max_chars!r}")
        for name in ("background_brightness", "text_brightness"):
            v = getattr(self, name)
            if not _is_int(v) or not 0 <= v <= 255:
                raise ValueError(f"{name} must be an int in [0, 255], got {v!r}")
        for name in ("spacing", "min_width"):
            v = getattr(self, name)
            if not _is_int(v) or v < 0:
                raise ValueError(f"{name} must be an int >= 0, got {v!r}")
        for name in ("lower", "monospace", "word_wrap"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")

    def to_dict(self):
        return dataclasses.asdict(self)
