"""The trainer on each kind of data: CSV files (skipped images counted, malformed files named
with their line), WebDataset shards, and text pairs mixed into the batch, which also resume
exactly."""
import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from clippo.train import checkpoint as ck
from clippo.train.data import GlobalBatchSampler
from clippo.train import main, parse_args, run
from _run_metrics import metrics as _metrics

pytestmark = pytest.mark.filterwarnings("ignore:'set_vital' is deprecated")

TINY = ["--model", "mu/8", "--image-size", "32", "--out-dim", "16", "--batch-size", "8",
        "--log-every", "1", "--no-progress", "--workers", "0"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def _png(color, size=40):
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), color, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_csv_with_skipped_rows(tmp_path):
    rows = ["filepath\ttitle"]
    for i in range(12):
        (tmp_path / f"{i}.png").write_bytes(_png((20 * i, 100, 200)))
        rows.append(f"{i}.png\tcolour number {i}")
    rows.append("missing.png\ta photo that is not there")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    rows.append("broken.png\tan undecodable photo")
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    summary = run(parse_args(TINY + ["--train-data", str(tmp_path / "train.csv"),
                                     "--epochs", "2", "--output", str(out)]))
    lines = _metrics(out)
    # 14 rows, batch 8: 2 epochs are 28 samples, 4 steps; the batches run on into the next
    # epoch
    assert summary["steps"] == 4 and len(lines) == 4
    sampler = GlobalBatchSampler(14, 8, seed=0)
    bad = [sum(i >= 12 for _, i, _ in sampler.micro_batch(8 * k, 0))  # rows 12, 13: broken
           for k in range(4)]
    assert [r["skipped"] for r in lines] == bad and sum(bad) == 4  # each bad row twice
    assert [r["batch_size"] for r in lines] == [8 - b for b in bad]  # the samples in the loss
    assert [r["epoch"] for r in lines] == [0, 1, 1, 2]  # samples 8, 16, 24, 32 of 14 each


def test_malformed_csv_names_file_and_line(tmp_path, capsys):
    (tmp_path / "bad.csv").write_text("filepath\ttitle\na.png\tok\nb.png\tone\ttoo many\n")
    code = main(TINY + ["--train-data", str(tmp_path / "bad.csv"), "--steps", "2",
                        "--output", str(tmp_path / "o")])
    assert code == 1
    assert f"{tmp_path / 'bad.csv'}:3" in capsys.readouterr().err


def test_webdataset_shards(tmp_path):
    for shard in range(2):
        with tarfile.open(tmp_path / f"shard-{shard:06d}.tar", "w") as tar:
            for i in range(10):
                for ext, data in (("png", _png((shard * 100, i * 20, 50))),
                                  ("txt", f"shard {shard} image {i}".encode())):
                    info = tarfile.TarInfo(f"{shard:02d}{i:04d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "run"
    # streamed (remote) shards need the epoch length; local shards are indexed
    remote = f"pipe:cat {tmp_path / 'shard-000000.tar'}"
    assert main(TINY + ["--train-data", remote, "--steps", "2", "--output",
                        str(tmp_path / "remote")]) == 1
    args = TINY + ["--train-data", str(tmp_path / "shard-{000000..000001}.tar"),
                   "--output", str(out)]
    summary = run(parse_args(args + ["--epochs", "2"]))
    assert summary["steps"] == 5  # 2 x 20 samples in steps of 8
    assert [r["epoch"] for r in _metrics(out)] == [0, 0, 1, 1, 1]


def test_text_pairs_join_the_batch_and_resume_exactly(tmp_path):
    flags = TINY + ["--train-data", "builtin", "--train-num-samples", "64", "--text-pairs",
                    "builtin", "--text-pair-fraction", "0.25", "--steps", "8",
                    "--save-every", "4"]
    ref = tmp_path / "ref"
    run(parse_args(flags + ["--output", str(ref)]))
    want = _metrics(ref)
    assert all(r["batch_size"] == 8 for r in want)  # 6 image-text + 2 sentence pairs
    # resume the same run from step 4
    (ref / "checkpoints" / ck.checkpoint_name(8)).unlink()
    (ref / "model" / "model.safetensors").unlink()
    resumed = run(parse_args(flags + ["--output", str(ref), "--resume", "latest"]))
    assert resumed["start_step"] == 4
    assert _metrics(ref) == want


def test_random_resized_crop_flag_reaches_the_csv_reader(tmp_path):
    """--random-resized-crop crops: a left-red / right-blue image stays the same under the
    plain resize, but some random crops of it differ."""
    from clippo.train.data import _image_text_dataset
    half = np.zeros((40, 40, 3), np.uint8)
    half[:, :20] = (255, 0, 0)
    half[:, 20:] = (0, 0, 255)
    Image.fromarray(half).save(tmp_path / "a.png")
    (tmp_path / "t.csv").write_text("filepath\ttitle\na.png\tred and blue\n")
    base = TINY + ["--train-data", str(tmp_path / "t.csv"), "--steps", "1"]
    plain = _image_text_dataset(parse_args(base), "csv", 32)
    crop = _image_text_dataset(parse_args(base + ["--random-resized-crop"]), "csv", 32)
    torch.manual_seed(0)
    first = plain[0][0]
    assert all(torch.equal(plain[0][0], first) for _ in range(3))
    assert any(not torch.equal(crop[0][0], first) for _ in range(8))
