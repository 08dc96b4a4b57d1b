"""Image-text pairs listed in a CSV/TSV file (OpenCLIP's --train-data FILE.csv).

    filepath,title
    images/0001.jpg,a photo of a cat
    /data/x/0002.png,"a caption, with a comma"

OpenCLIP's flags map to the arguments: --csv-separator -> sep, --csv-img-key -> img_key,
--csv-caption-key -> caption_key. Image paths are relative to the CSV file's folder unless
absolute. The file is parsed once at construction by clippo.data.textfiles (the reader of
`clippo eval` too: without --csv-separator, tab if the header holds one, else comma; quoted
fields may hold the separator or newlines); a missing column or a row with the wrong number
of fields is a DataFormatError (a ValueError) naming the file and line. Samples whose image
is missing or undecodable, or whose caption is empty, come back as a Skipped naming the image
(skipped and counted by the collate).
"""
import logging
import os

from torch.utils.data import Dataset

from clippo.data._strings import StringTable
from clippo.data.collate import Skipped
from clippo.data.textfiles import DataFormatError, csv_rows, need_columns
from clippo.data.transforms import ImageTransform, load_and_transform

__all__ = ["CsvDataset", "read_csv_pairs"]

log = logging.getLogger("clippo.data")


def read_csv_pairs(path, sep=None, img_key="filepath", caption_key="title"):
    """(image paths, captions) read from a CSV/TSV file with a header row, by the reader
    `clippo eval` uses too (clippo.data.textfiles: sep None is tab when the header holds one,
    else comma;
    errors are DataFormatError naming file and line)."""
    path = os.fspath(path)
    paths, captions = [], []
    for lineno, row in csv_rows(path, sep):
        if not paths:
            need_columns(path, row.keys(), [img_key, caption_key],
                         ["--csv-img-key", "--csv-caption-key"])
        paths.append(row[img_key])
        captions.append(row[caption_key])
    return paths, captions


class CsvDataset(Dataset):
    """Map-style dataset: item -> (uint8 image [3, S, S], caption) or a Skipped (skip).

    transform: a callable PIL RGB image -> uint8 tensor; default ImageTransform(image_size)
    (plain resize to the model's size, as the reference).
    """

    def __init__(self, path, image_size=224, sep=None, img_key="filepath", caption_key="title",
                 transform=None):
        self.path = os.fspath(path)
        paths, captions = read_csv_pairs(self.path, sep, img_key, caption_key)
        if not paths:
            raise DataFormatError(self.path, None, "no rows after the header")
        self.root = os.path.dirname(os.path.abspath(self.path))
        self._paths = StringTable(paths)
        self._captions = StringTable(captions)
        self.transform = transform if transform is not None else ImageTransform(image_size)

    def __len__(self):
        return len(self._paths)

    def image_path(self, i):
        p = self._paths[i]
        return p if os.path.isabs(p) else os.path.join(self.root, p)

    def caption(self, i):
        return self._captions[i]

    def __getitem__(self, i):
        caption = self._captions[i].strip()
        if not caption:
            log.debug("%s: row %d has an empty caption; skipped", self.path, i)
            return Skipped(f"{self.path} row {i + 1} (empty caption)")
        image = load_and_transform(self.image_path(i), self.transform)
        if image is None:
            return Skipped(self.image_path(i))
        return image, caption
