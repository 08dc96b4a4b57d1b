"""Small figures for reports, drawn with Pillow: image grids, a training curve, retrieval rows.

Pillow's built-in bitmap font keeps them free of system fonts; text that it cannot draw
(non-Latin captions) is shown as the model sees it, rendered by clippo itself.
"""
import math

import numpy as np


def grid(images, columns=None, gutter=4, fill=255):
    """Tile uint8 [N, H, W] or [N, H, W, 3] into one image with `fill` gutters."""
    images = np.asarray(images)
    if images.ndim not in (3, 4) or images.shape[0] == 0:
        raise ValueError(f"expected a non-empty [N, H, W] or [N, H, W, 3] array, "
                         f"got shape {images.shape}")
    n, h, w = images.shape[:3]
    columns = max(1, min(n, columns or math.ceil(math.sqrt(n))))
    rows = math.ceil(n / columns)
    shape = (rows * (h + gutter) - gutter, columns * (w + gutter) - gutter) + images.shape[3:]
    out = np.full(shape, fill, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        out[r * (h + gutter):r * (h + gutter) + h, c * (w + gutter):c * (w + gutter) + w] = img
    return out


def _font():
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=14)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def nice_ticks(lo, hi, count=5):
    """Round tick values (1, 2 or 5 times a power of ten apart) covering [lo, hi]."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / max(1, count - 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    k = 0
    while first + k * step <= hi + 1e-9 * step:
        ticks.append(round(first + k * step, 10))
        k += 1
    return ticks


def _tick_label(v):
    return f"{v:.0f}" if float(v).is_integer() else f"{v:g}"


def line_plot(series, title="", xlabel="step", ylabel="", size=(640, 400), hlines=(),
              vlines=(), notes=()):
    """RGB uint8 plot of named (xs, ys) series: {"loss": (steps, values)}; hlines: [(y, name)];
    vlines: [(x, name)] (a dashed line where, say, a stage starts); notes: lines of text
    under the plot."""
    from PIL import Image, ImageDraw

    W, H = size
    H += 16 * len(notes)
    left, right, top, bottom = 64, 16, 32, 44 + 16 * len(notes)
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    font = _font()
    xs_all = np.concatenate([np.asarray(x, float) for x, _ in series.values()])
    ys_all = np.concatenate([np.asarray(y, float) for _, y in series.values()]
                            + [np.array([y for y, _ in hlines], float)])
    ys_all = ys_all[np.isfinite(ys_all)]
    if xs_all.size == 0 or ys_all.size == 0:
        raise ValueError("nothing to plot")
    x0, x1 = float(xs_all.min()), float(xs_all.max()) or 1.0
    y0, y1 = float(ys_all.min()), float(ys_all.max())
    if x1 == x0:
        x1 = x0 + 1
    pad = 0.05 * (y1 - y0 or 1.0)
    y0, y1 = y0 - pad, y1 + pad

    def px(x, y):
        return (left + (x - x0) / (x1 - x0) * (W - left - right),
                top + (y1 - y) / (y1 - y0) * (H - top - bottom))

    d.rectangle([left, top, W - right, H - bottom], outline=(0, 0, 0))
    for y in nice_ticks(y0, y1):
        _, py = px(x0, y)
        d.line([left - 4, py, left, py], fill=(0, 0, 0))
        d.text((4, py - 7), _tick_label(y), fill=(0, 0, 0), font=font)
    for x in nice_ticks(x0, x1):
        qx, _ = px(x, y0)
        d.line([qx, H - bottom, qx, H - bottom + 4], fill=(0, 0, 0))
        d.text((qx - 4 * len(_tick_label(x)), H - bottom + 6), _tick_label(x), fill=(0, 0, 0),
               font=font)
    d.text((W // 2 - 20, H - bottom + 24), xlabel, fill=(0, 0, 0), font=font)
    for k, note in enumerate(notes):
        d.text((8, H - bottom + 42 + 16 * k), note, fill=(70, 70, 70), font=font)
    d.text((left, 8), title or ylabel, fill=(0, 0, 0), font=font)
    for (x, name) in vlines:
        qx, _ = px(x, y0)
        for yy in range(top, H - bottom, 8):  # dashed
            d.line([qx, yy, qx, min(yy + 4, H - bottom)], fill=(90, 90, 90))
        d.text((qx + 4, H - bottom - 20), name, fill=(70, 70, 70), font=font)
    colours = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]
    for (y, name) in hlines:
        _, py = px(x0, y)
        d.line([left, py, W - right, py], fill=(150, 150, 150), width=1)
        d.text((W - right - 8 * len(name) - 4, py - 16), name, fill=(110, 110, 110), font=font)
    for k, (name, (xs, ys)) in enumerate(series.items()):
        pts = [px(float(x), float(y)) for x, y in zip(xs, ys) if np.isfinite(y)]
        colour = colours[k % len(colours)]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        d.text((left + 8, top + 6 + 16 * k), name, fill=colour, font=font)
    return np.asarray(img)


def outline(image, colour, width=3):
    """A copy of uint8 [H, W, 3] with a coloured frame."""
    out = np.array(image, copy=True)
    out[:width], out[-width:], out[:, :width], out[:, -width:] = colour, colour, colour, colour
    return out


def labelled_rows(rows, gutter=6):
    """Stack rows of equally tall RGB images: rows = [[img, img, ...], ...] -> one image."""
    rows = [np.concatenate(sum(([r, np.full((r.shape[0], gutter, 3), 255, np.uint8)]
                                for r in row), [])[:-1], axis=1) for row in rows]
    width = max(r.shape[1] for r in rows)
    padded = [np.pad(r, ((0, gutter), (0, width - r.shape[1]), (0, 0)), constant_values=255)
              for r in rows]
    return np.concatenate(padded, axis=0)[:-gutter]


def with_header(image, title, column_labels=(), column_width=None, gutter=4, left=0):
    """uint8 [H, W, 3] with a white band above it: a title ("\n" between lines), and a label
    centred over each column (columns `column_width` wide, `gutter` apart, from `left`)."""
    from PIL import Image, ImageDraw

    image = np.asarray(image)
    lines = title.split("\n")
    title_height = 6 + 18 * len(lines)
    band = title_height + (20 if column_labels else 0)
    canvas = Image.new("RGB", (image.shape[1], image.shape[0] + band), "white")
    canvas.paste(Image.fromarray(image), (0, band))
    d = ImageDraw.Draw(canvas)
    font = _font()
    for k, line in enumerate(lines):
        d.text((4, 4 + 18 * k), line, fill=(0, 0, 0), font=font)
    for k, label in enumerate(column_labels):
        centre = left + k * (column_width + gutter) + column_width // 2
        d.text((centre - 4 * len(label), title_height), label, fill=(60, 60, 60), font=font)
    return np.asarray(canvas)


def text_strip(width, labels, positions, height=18):
    """A white uint8 [height, width, 3] strip with each label drawn starting at its x."""
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(strip)
    font = _font()
    for label, x in zip(labels, positions):
        d.text((x + 2, 2), label, fill=(40, 40, 40), font=font)
    return np.asarray(strip)
