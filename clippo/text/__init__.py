"""Text rendering: glyph atlases (Unifont .hex or any FreeType font) and the rasterizer."""
from clippo.text.config import RenderConfig
from clippo.text.render import TextRenderer, render

__all__ = ["RenderConfig", "TextRenderer", "render"]
