"""Reading the text files that list data, for training and evaluation alike: one error type
(`DataFormatError`, naming file and line), UTF-8 lines, and one CSV/TSV reader with one rule
for the separator.

Separator rule (`--csv-separator` of `clippo train` and `clippo eval`): when none is given,
the header line decides: a tab if it holds a tab, else a comma. So OpenCLIP's tab-separated
files (its default separator, whatever the file is called) and ordinary comma-separated CSVs
both read without the flag. A given separator is used as is (`"\\t"` typed in a shell, a
backslash and a t, means a tab).
"""
import csv

__all__ = ["DataFormatError", "read_text_lines", "csv_separator", "csv_rows", "need_columns"]


class DataFormatError(ValueError):
    """A malformed dataset file: `path`, `line` (1-based, None when unknown) and the message."""

    def __init__(self, path, line, message):
        self.path, self.line = str(path), line
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")


def read_text_lines(path, keep_newline=False):
    """(line number, line) of a UTF-8 file, without its newline unless keep_newline; bad UTF-8
    names its line."""
    try:
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataFormatError(path, lineno, f"not UTF-8 ({e.reason} at byte "
                                          f"{e.start})") from None
                if lineno == 1:
                    text = text.lstrip("\ufeff")
                yield lineno, (text if keep_newline else text.rstrip("\r\n"))
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {path}") from None


def csv_separator(path, sep=None):
    """The separator of a CSV/TSV file: `sep` if given, else a tab when the header (first
    non-blank) line holds one and a comma otherwise (the module's rule)."""
    if sep is None:
        for _, line in read_text_lines(path):
            if line.strip():
                return "\t" if "\t" in line else ","
        return ","
    if sep == "\\t":
        sep = "\t"
    if len(sep) != 1:
        raise ValueError(f"{path}: the CSV separator must be one character, got {sep!r}")
    return sep


def csv_rows(path, sep=None, quoting=csv.QUOTE_MINIMAL, header=True):
    """(line number, {column: value} or [values]) rows of a CSV/TSV file; the header is line 1.

    sep: see csv_separator. Quoted fields may hold the separator or newlines. A row with more
    or fewer fields than the header, or bad quoting, raises DataFormatError naming the line;
    blank lines are skipped.
    """
    sep = csv_separator(path, sep)
    lines = (line for _, line in read_text_lines(path, keep_newline=True))
    reader = csv.reader(lines, delimiter=sep, quoting=quoting, strict=True)
    columns = None
    try:
        for row in reader:
            lineno = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            if header and columns is None:
                columns = [c.strip() for c in row]
                if len(set(columns)) != len(columns):
                    raise DataFormatError(path, lineno, f"duplicate column names {columns}")
                continue
            if columns is not None and len(row) != len(columns):
                raise DataFormatError(path, lineno, f"{len(row)} fields, the header has "
                                      f"{len(columns)} ({sep!r}-separated)")
            yield lineno, (dict(zip(columns, row)) if columns is not None else row)
    except csv.Error as e:
        raise DataFormatError(path, reader.line_num, f"bad CSV ({e})") from None
    if header and columns is None:
        raise DataFormatError(path, None, "empty file (expected a header line)")


def need_columns(path, row_keys, keys, flags):
    """DataFormatError naming the flag to set when one of `keys` is not a column."""
    missing = [k for k in keys if k not in row_keys]
    if missing:
        hint = ", ".join(f"{flag} {k!r}" for k, flag in zip(keys, flags) if k in missing)
        raise DataFormatError(path, 1, f"no column {missing[0]!r} in the header {list(row_keys)} "
                              f"(set {hint}, or --csv-separator)")
