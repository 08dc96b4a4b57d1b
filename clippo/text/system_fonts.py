"""Finding an installed font by name, for `clippo render --font DejaVuSans.ttf`.

A name that is an existing file is used as it is. A bare file name (no folder) is looked up
among the fonts fontconfig knows (`fc-list`) and then in the standard font folders; a name
without a font suffix is taken as a family name for fontconfig (`fc-match "DejaVu Sans"`),
accepted only when the match really is that family (fc-match always answers with some font).
"""
import os
import shutil
import subprocess
from pathlib import Path

from clippo.text.atlas import FontError

_which = shutil.which  # where fontconfig's tools are (tests replace it to hide them)

FONT_SUFFIXES = (".ttf", ".otf", ".ttc", ".otc", ".pfb", ".pfa", ".woff", ".woff2",
                 ".hex", ".hex.gz")


def font_dirs():
    """The standard font folders of Linux desktops (fontconfig's defaults), existing or not."""
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return [Path("/usr/share/fonts"), Path("/usr/local/share/fonts"),
            Path(data_home) / "fonts", Path(os.path.expanduser("~/.fonts"))]


def _has_font_suffix(name):
    return name.lower().endswith(FONT_SUFFIXES)


def _fontconfig(*args):
    """stdout of a fontconfig tool, or None where it is missing or fails."""
    if _which(args[0]) is None:
        return None
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def _candidates(dirs):
    """Font files fontconfig lists, then those under `dirs`, each once, in a stable order."""
    listed = _fontconfig("fc-list", "--format", "%{file}\n")
    seen = set()
    for line in sorted((listed or "").splitlines()):
        if line and line not in seen:
            seen.add(line)
            yield Path(line)
    for root in dirs:
        for folder, subdirs, files in os.walk(root):
            subdirs.sort()
            for f in sorted(files):
                path = os.path.join(folder, f)
                if path not in seen:
                    seen.add(path)
                    yield Path(path)


def _by_file_name(name, dirs):
    """The first font file named `name` (an exact match, else ignoring case), or None."""
    folded = None
    for path in _candidates(dirs):
        if path.name == name and path.is_file():
            return path
        if folded is None and path.name.lower() == name.lower() and path.is_file():
            folded = path
    return folded


def _by_family(name):
    """The file fontconfig matches for family `name`, when its family is that name."""
    out = _fontconfig("fc-match", "--format", "%{file}\n%{family}\n", name)
    if not out or "\n" not in out:
        return None
    file, families = out.split("\n", 1)
    wanted = name.replace(" ", "").lower()
    names = [f.replace(" ", "").lower() for f in families.strip().split(",")]
    return Path(file) if wanted in names and Path(file).is_file() else None


def find_font(name, dirs=None):
    """Resolve a font given by path, file name or family name to a file.

    Returns (path, looked_up): looked_up is False when `name` was an existing file. Raises
    FontError naming where it looked when nothing matches.
    """
    given = Path(name).expanduser()
    if given.is_file():
        return given, False
    if os.sep in name or (os.altsep and os.altsep in name):
        raise FontError(f"font file not found: {name}")
    if not _has_font_suffix(name):
        found = _by_family(name)
        if found is not None:
            return found, True
        how = "fontconfig (fc-match) has no such family" if _which("fc-match") else \
            "fontconfig (fc-match) is not installed to look up family names"
        raise FontError(f"font {name!r} not found: not a file here, and {how}; give the "
                        "font's path or its file name (e.g. DejaVuSans.ttf)")
    dirs = font_dirs() if dirs is None else [Path(d) for d in dirs]
    found = _by_file_name(name, dirs)
    if found is not None:
        return found, True
    where = ("fontconfig's fonts (fc-list), " if _which("fc-list") else "") + \
        ", ".join(str(d) for d in dirs)
    raise FontError(f"font {name!r} not found: not a file here, nor in {where}; give the "
                    "font's path")
