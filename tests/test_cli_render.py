"""`clippo render` as a user runs it: files that respect the umask, the format the output's
suffix asks for (checked by decoding with Pillow), clear errors for formats it cannot write,
and fonts given by file or family name (clippo.text.system_fonts)."""
import io
import os
import shutil
import sys

import numpy as np
import pytest

import clippo
from clippo import cli
from clippo.figures import grid
from clippo.text import png, system_fonts
from clippo.text.atlas import FontError

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402


def decode(path):
    with Image.open(path) as im:
        return im.format, np.asarray(im.convert("L"))


@pytest.fixture
def umask():
    """Set the process umask for one test; the old one comes back after it."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def test_written_files_get_the_mode_of_any_new_file(tmp_path, umask):
    image = np.arange(48, dtype=np.uint8).reshape(6, 8)
    for mask in (0o022, 0o077, 0o002):
        umask(mask)
        reference = tmp_path / f"plain-{mask:o}"
        reference.write_bytes(b"")   # what open() gives under this umask
        for name in (f"a-{mask:o}.png", f"a-{mask:o}.bmp"):
            png.save_image(tmp_path / name, image)
            assert (os.stat(tmp_path / name).st_mode & 0o777
                    == os.stat(reference).st_mode & 0o777 == 0o666 & ~mask)
    # overwriting replaces the file (atomically) and leaves no temporary behind
    png.save_png(tmp_path / "a-22.png", image[::-1])
    assert np.array_equal(decode(tmp_path / "a-22.png")[1], image[::-1])
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def render_cli(args, capsys):
    rc = cli.main(["render", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_png_output_holds_the_rendered_pixels(tmp_path, capsys):
    rc, _, err = render_cli(["hello world", "-o", str(tmp_path / "x.png")], capsys)
    assert rc == 0, err
    fmt, pixels = decode(tmp_path / "x.png")
    assert fmt == "PNG"
    assert np.array_equal(pixels, clippo.TextRenderer()(["hello world"])[0, 0].numpy())


@pytest.mark.parametrize("name,fmt", [("x.jpg", "JPEG"), ("x.JPEG", "JPEG"), ("x.bmp", "BMP"),
                                      ("x.tif", "TIFF")])
def test_output_suffix_picks_the_format(tmp_path, capsys, name, fmt):
    texts = ["one", "two", "three"]
    rc, _, err = render_cli([*texts, "--image-size", "64", "-o", str(tmp_path / name)], capsys)
    assert rc == 0, err
    got_fmt, pixels = decode(tmp_path / name)
    assert got_fmt == fmt
    want = grid(clippo.TextRenderer(image_size=64)(texts)[:, 0].numpy())
    if fmt == "JPEG":   # lossy: the same as Pillow's own encoding of the same pixels
        buffer = io.BytesIO()
        Image.fromarray(want).save(buffer, format="JPEG", quality=95)
        buffer.seek(0)
        assert np.array_equal(pixels, decode(buffer)[1])
        assert np.abs(pixels.astype(int) - want).mean() < 4
    else:
        assert np.array_equal(pixels, want)


@pytest.mark.parametrize("name,message", [("x.foo", "cannot write .foo"),
                                          ("out", "no file suffix"),
                                          ("x.pdfx", "cannot write .pdfx")])
def test_unknown_or_missing_suffix_is_a_clear_error(tmp_path, capsys, name, message):
    rc, _, err = render_cli(["hello", "-o", str(tmp_path / name)], capsys)
    assert rc == 1
    assert message in err and "\n" == err[-1] and err.count("\n") == 1   # one line
    assert os.listdir(tmp_path) == []


def test_formats_other_than_png_without_pillow(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)   # import PIL raises ImportError
    rc, _, err = render_cli(["hello", "-o", str(tmp_path / "x.jpg")], capsys)
    assert rc == 1 and "pip install pillow" in err
    rc, _, err = render_cli(["hello", "-o", str(tmp_path / "x.png")], capsys)
    assert rc == 0, err
    monkeypatch.undo()
    assert np.array_equal(decode(tmp_path / "x.png")[1],
                          clippo.TextRenderer()(["hello"])[0, 0].numpy())


# -- fonts by name ----------------------------------------------------------------------------

def a_ttf():
    from render_corpus import DEJAVU
    if os.path.exists(DEJAVU):
        return DEJAVU
    try:
        import matplotlib
    except ImportError:
        return None
    path = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf")
    return path if os.path.exists(path) else None


@pytest.fixture
def font_dir(tmp_path, monkeypatch):
    """A standard font folder holding one TTF under a made-up name, and no fontconfig."""
    src = a_ttf()
    if src is None:
        pytest.skip("needs a TTF font (fonts-dejavu-core)")
    root = tmp_path / "fonts"
    (root / "truetype" / "clippo").mkdir(parents=True)
    (root / "misc").mkdir()
    (root / "misc" / "README").write_text("not a font")
    font = root / "truetype" / "clippo" / "ClippoTestSans.ttf"
    shutil.copy(src, font)
    monkeypatch.setattr(system_fonts, "font_dirs", lambda: [tmp_path / "absent", root])
    monkeypatch.setattr(system_fonts, "_which", lambda name: None)   # no fontconfig
    monkeypatch.setenv("CLIPPO_CACHE_DIR", str(tmp_path / "cache"))
    return font


def test_a_bare_font_file_name_is_found_in_the_font_folders(font_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert system_fonts.find_font("ClippoTestSans.ttf") == (font_dir, True)
    assert system_fonts.find_font("clippotestsans.TTF") == (font_dir, True)
    with pytest.raises(FontError, match="'Missing.ttf' not found.*fonts"):
        system_fonts.find_font("Missing.ttf")
    with pytest.raises(FontError, match="fc-match"):   # a family name needs fontconfig
        system_fonts.find_font("Clippo Test Sans")
    with pytest.raises(FontError, match="not found"):  # a path is never looked up
        system_fonts.find_font("sub/ClippoTestSans.ttf")
    # a file of that name here is used as it is
    local = tmp_path / "ClippoTestSans.ttf"
    local.write_bytes(font_dir.read_bytes())
    path, looked_up = system_fonts.find_font("ClippoTestSans.ttf")
    assert not looked_up and path.resolve() == local


def test_render_with_a_font_name_says_which_file_it_used(font_dir, tmp_path, capsys):
    out = tmp_path / "x.png"
    rc, _, err = render_cli(["Hello", "--font", "ClippoTestSans.ttf", "-o", str(out)], capsys)
    assert rc == 0, err
    assert f"using font: {font_dir}" in err
    want = clippo.TextRenderer(font=str(font_dir))(["Hello"])[0, 0].numpy()
    assert np.array_equal(decode(out)[1], want)
    rc, _, err = render_cli(["Hello", "--font", "NoSuchFont.ttf", "-o", str(out)], capsys)
    assert rc == 1 and "'NoSuchFont.ttf' not found" in err


@pytest.mark.skipif(shutil.which("fc-match") is None or a_ttf() is None
                    or not a_ttf().startswith("/usr/share/fonts"),
                    reason="needs fontconfig and fonts-dejavu-core")
def test_fontconfig_finds_installed_fonts_by_file_and_family():
    path, looked_up = system_fonts.find_font("DejaVuSans.ttf")
    assert looked_up and path.name == "DejaVuSans.ttf" and path.is_file()
    path, _ = system_fonts.find_font("DejaVu Sans Mono")
    assert path.name == "DejaVuSansMono.ttf"
    with pytest.raises(FontError, match="no such family"):
        system_fonts.find_font("No Such Family Clippo")
