"""Saving rendered images: a minimal PNG writer (8-bit grey or RGB), so viewing renders needs
no imaging library, and Pillow for the other formats a file's suffix may ask for."""
import io
import os
import secrets
import struct
import zlib
from pathlib import Path

import numpy as np


def _chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def _checked(image):
    image = np.ascontiguousarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"expected uint8 [H, W] or [H, W, 3], got {image.dtype} {image.shape}")
    return image


def encode_png(image):
    """PNG bytes of a uint8 array [H, W] (grey) or [H, W, 3] (RGB)."""
    image = _checked(image)
    h, w = image.shape[:2]
    color = 0 if image.ndim == 2 else 2
    rows = image.reshape(h, -1)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()  # filter 0
    return (b"\x89PNG\r\n\x1a\n"
            + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b""))


def write_atomic(path, data):
    """Write bytes to `path` through a temporary file and a rename, so a crash never leaves a
    half-written file there. The file gets the permissions of any new file (0666 less the
    umask): the temporary is created with os.open's mode, which the kernel masks."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    for _ in range(100):
        tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"no free temporary name next to {path}")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_png(path, image):
    """Write a uint8 [H, W] or [H, W, 3] image as PNG, atomically."""
    write_atomic(path, encode_png(image))


# Options for Pillow's writers where its defaults blur text: JPEG at quality 75 rings around
# one-pixel strokes.
_PIL_OPTIONS = {"JPEG": dict(quality=95), "WEBP": dict(lossless=True)}


def image_format(path):
    """The format a file name asks for by its suffix: "PNG" (the built-in writer), or the name
    of a Pillow format that can be written. Raises ValueError for a missing or unknown suffix,
    and ImportError when the format needs Pillow and Pillow is not installed."""
    suffix = Path(path).suffix.lower()
    if suffix == ".png":
        return "PNG"
    if not suffix:
        raise ValueError(f"{path}: no file suffix to choose the image format by "
                         "(use .png, or .jpg, .bmp, .tif, .webp, ... with Pillow)")
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError(f"writing {suffix} files needs Pillow (pip install pillow); "
                          ".png needs nothing") from e
    Image.init()
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None or fmt not in Image.SAVE:
        raise ValueError(f"{path}: Pillow cannot write {suffix} files; use .png, .jpg, .bmp, "
                         ".tif, .webp or another suffix Pillow writes")
    return fmt


def save_image(path, image):
    """Write a uint8 [H, W] or [H, W, 3] image atomically in the format of the file's suffix
    (see image_format): PNG with the built-in writer, any other through Pillow."""
    fmt = image_format(path)
    if fmt == "PNG":
        return save_png(path, image)
    from PIL import Image
    image = _checked(image)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **_PIL_OPTIONS.get(fmt, {}))
    write_atomic(path, buffer.getvalue())
