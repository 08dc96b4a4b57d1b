"""One decode-and-resize for every photo: a JPEG gives the same pixels through training's
pipeline (CsvDataset), `clippo eval`'s readers (ImageDataset) and open_clip_interface's
preprocess, draft-mode JPEG decoding included."""
import numpy as np
import torch
from PIL import Image

from clippo.data.csv_dataset import CsvDataset
from clippo.eval.data import ImageDataset, as_image
from clippo.eval.interface import Preprocess

SIZE = 32


def _photo(path):
    """A 400 x 300 JPEG with detail at every scale (draft decoding changes its pixels)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:300, 0:400]
    arr = np.stack([(x * 0.6) % 256, (y * 0.8) % 256, (x + y) % 256], -1)
    arr = (arr + rng.integers(0, 60, arr.shape)).clip(0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path, quality=90)
    return path


def _uint8(x):
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def test_one_jpeg_same_tensor_everywhere(tmp_path):
    jpeg = _photo(tmp_path / "photo.jpg")
    (tmp_path / "train.csv").write_text("filepath,title\nphoto.jpg,a photo\n")
    train = CsvDataset(tmp_path / "train.csv", image_size=SIZE)[0][0]
    evaluation = ImageDataset([str(jpeg)], [0], SIZE)[0][0]
    preprocess = Preprocess((SIZE, SIZE))
    from_open = _uint8(preprocess(Image.open(jpeg)))
    from_path = _uint8(preprocess(str(jpeg)))
    assert train.dtype == torch.uint8 and train.shape == (3, SIZE, SIZE)
    assert torch.equal(train, evaluation)
    assert torch.equal(train, from_open) and torch.equal(train, from_path)
    with Image.open(jpeg) as im:  # a lazily opened JPEG given to clippo.eval: the same too
        assert torch.equal(train, as_image(im, SIZE))

    # the check has teeth: a full decode then resize gives other pixels
    with Image.open(jpeg) as im:
        full = np.asarray(im.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR))
    assert not np.array_equal(full, train.permute(1, 2, 0).numpy())


def test_png_and_loaded_images_resize_alike(tmp_path):
    """No draft mode outside JPEG: a PNG and an already-loaded image resize the same way."""
    png = tmp_path / "photo.png"
    with Image.open(_photo(tmp_path / "p.jpg")) as im:
        im.convert("RGB").save(png)
    train = ImageDataset([str(png)], [0], SIZE)[0][0]
    with Image.open(png) as im:
        im.load()
        assert torch.equal(train, _uint8(Preprocess((SIZE, SIZE))(im)))


# -- one CSV reader ------------------------------------------------------------------------------

def test_one_csv_reader_one_separator_rule(tmp_path):
    """Training (CsvDataset, `clippo train`'s default flags) and evaluation
    (read_retrieval_csv, `clippo eval`'s) read one file alike: without a separator, a tab when
    the header holds one (OpenCLIP's tab-separated .csv files too), else a comma; and the same
    DataFormatError for the same fault."""
    from clippo.data import DataFormatError as TrainError
    from clippo.eval.data import DataFormatError as EvalError, read_retrieval_csv
    from clippo.train import parse_args
    assert TrainError is EvalError
    assert parse_args(["--train-data", "x.csv"]).csv_separator is None
    for name, sep in (("pairs.tsv", "\t"), ("pairs.csv", ","), ("openclip.csv", "\t")):
        path = tmp_path / name
        path.write_text(f"filepath{sep}title\na.png{sep}\"a caption, quoted\"\n")
        ds = CsvDataset(path, image_size=SIZE)
        assert ds.caption(0) == "a caption, quoted" and ds.image_path(0) == str(tmp_path / "a.png")
        assert read_retrieval_csv(path) == [(str(tmp_path / "a.png"), ["a caption, quoted"])]
    bad = tmp_path / "bad.csv"
    bad.write_text("filepath,title\na.png,one\nb.png,two,three\n")
    errors = []
    for read in (lambda: CsvDataset(bad, image_size=SIZE), lambda: read_retrieval_csv(bad)):
        try:
            read()
        except TrainError as e:
            errors.append((e.line, str(e)))
    assert errors == [(3, f"{bad}:3: 3 fields, the header has 2 (','-separated)")] * 2
