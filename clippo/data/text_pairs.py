"""Neighbouring-sentence pairs for next-sentence contrastive training (--text-pairs FILE).

CLIPPO's "+25% C4" fills part of every batch with pairs of consecutive sentences, both
rendered as images and trained with the same contrastive loss as image-text pairs.

Formats (chosen by the file name: .jsonl / .ndjson / .json are JSON Lines, anything else is
plain text; or format="text" / "jsonl"):
- plain text: one sentence per line; a blank line ends a paragraph; the pairs are neighbouring
  non-empty lines within a paragraph (a one-line paragraph gives no pair);
- JSON Lines: one object per line, either {"text_a": ..., "text_b": ...} (one pair) or
  {"sentences": [...]} (its neighbouring pairs). Blank lines are ignored. A line that is not
  such an object is a ValueError naming the file and line.

Items are (text_a, text_b), or None when either side is empty or blank (skipped and counted by
the collate). Text stays a string: it is rendered in the training step, never in workers.
"""
import json
import os

from torch.utils.data import Dataset

from clippo.data._strings import StringTable

__all__ = ["TextPairDataset", "read_text_pairs"]

_JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")


def _format_of(path, format):
    if format is None:
        return "jsonl" if path.lower().endswith(_JSONL_SUFFIXES) else "text"
    if format not in ("text", "jsonl"):
        raise ValueError(f"format must be 'text', 'jsonl' or None, got {format!r}")
    return format


def _read_lines(path):
    with open(path, encoding="utf-8") as f:
        lineno = 0
        try:
            for lineno, line in enumerate(f, 1):
                yield lineno, line.rstrip("\r\n")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text near line {lineno + 1}: {e}") from e


def _pairs_from_text(path):
    paragraph = []
    for _, line in _read_lines(path):
        sentence = line.strip()
        if not sentence:
            paragraph = []
            continue
        if paragraph:
            yield paragraph[-1], sentence
        paragraph = [sentence]


def _pairs_from_jsonl(path):
    for lineno, line in _read_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: invalid JSON: {e.msg} (column {e.colno})") \
                from None
        where = f"{path}:{lineno}"
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
        if "sentences" in record:
            sentences = record["sentences"]
            if not isinstance(sentences, list) or not all(isinstance(s, str)
                                                           for s in sentences):
                raise ValueError(f"{where}: 'sentences' must be a list of strings")
            yield from zip(sentences, sentences[1:])
        elif "text_a" in record and "text_b" in record:
            a, b = record["text_a"], record["text_b"]
            if not isinstance(a, str) or not isinstance(b, str):
                raise ValueError(f"{where}: 'text_a' and 'text_b' must be strings")
            yield a, b
        else:
            raise ValueError(f"{where}: expected keys 'text_a' and 'text_b', or 'sentences'; "
                             f"got {sorted(record)}")


def read_text_pairs(path, format=None):
    """List of (text_a, text_b) from a plain-text or JSON Lines file (see module docstring)."""
    path = os.fspath(path)
    fmt = _format_of(path, format)
    return list(_pairs_from_jsonl(path) if fmt == "jsonl" else _pairs_from_text(path))


class TextPairDataset(Dataset):
    """Map-style dataset of neighbouring-sentence pairs: item -> (text_a, text_b) or None."""

    def __init__(self, path, format=None):
        self.path = os.fspath(path)
        pairs = read_text_pairs(self.path, format)
        if not pairs:
            raise ValueError(f"{self.path}: no sentence pairs (plain text needs paragraphs of "
                             f"two or more non-empty lines)")
        self._a = StringTable(a for a, _ in pairs)
        self._b = StringTable(b for _, b in pairs)

    def __len__(self):
        return len(self._a)

    def __getitem__(self, i):
        a, b = self._a[i].strip(), self._b[i].strip()
        if not a or not b:
            return None
        return a, b
