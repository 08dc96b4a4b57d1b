"""Data mixtures ('::'-joined --train-data with --train-data-upsampling-factors, OpenCLIP's
syntax and meaning) and --dataset-resampled: the shares asked for, within binomial error, and
an exact resume."""
import io
import math
import tarfile

import numpy as np
import pytest
import torch

from clippo.data.mixture import expected_shares, parse_factors, weighted_shards
from clippo.train.data import get_data
from clippo.train.params import parse_args


def _png(value):
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_shards(folder, source, num_shards, per_shard=1):
    """num_shards tars of per_shard samples captioned '<source> <shard> <k>'; the pattern."""
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(num_shards):
        with tarfile.open(folder / f"{source}-{s:03d}.tar", "w") as tar:
            for k in range(per_shard):
                for ext, data in (("png", _png(10 * s + k)),
                                  ("txt", f"{source} {s} {k}".encode())):
                    info = tarfile.TarInfo(f"{source}{s:03d}{k:03d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(folder / f"{source}-{{000..{num_shards - 1:03d}}}.tar")


def _args(train_data, *extra):
    return parse_args(["--train-data", train_data, "--workers", "0", "--batch-size", "8",
                       "--seed", "3", *extra])


def _texts(data, num_batches):
    it = iter(data)
    return [t for _ in range(num_batches) for t in next(it)["texts"]]


def test_factors_follow_openclips_rule(tmp_path):
    a = write_shards(tmp_path, "a", 3)
    b = write_shards(tmp_path, "b", 1)
    urls, weights = weighted_shards(f"{a}::{b}", "1::6")
    assert len(urls) == 4 and weights == [1.0, 1.0, 1.0, 6.0]  # each shard: its source's factor
    assert expected_shares(f"{a}::{b}", "1::6") == pytest.approx([3 / 9, 6 / 9])
    assert expected_shares(f"{a}::{b}", "1::1") == pytest.approx([3 / 4, 1 / 4])  # by size
    with pytest.raises(ValueError, match="2 factor"):
        parse_factors("1::2", 3)
    with pytest.raises(ValueError, match="at least one"):
        parse_factors("0::0", 2)


@pytest.mark.parametrize("factors, share_b", [(None, 1 / 4), ("1::6", 6 / 9), ("1::0", 0.0)])
def test_mixture_gives_the_asked_shares(tmp_path, factors, share_b):
    """Source a: 3 shards, source b: 1 shard, one sample each, so every sample is one shard
    draw: b's count is binomial(n, share_b)."""
    a = write_shards(tmp_path, "a", 3)
    b = write_shards(tmp_path, "b", 1)
    extra = ["--dataset-resampled", "--train-num-samples", "10000"]
    if factors:
        extra += ["--train-data-upsampling-factors", factors]
    data = get_data(_args(f"{a}::{b}", *extra), image_size=8)
    texts = _texts(data, 100)
    n = len(texts)
    assert n == 800
    got = sum(t.startswith("b ") for t in texts) / n
    sd = math.sqrt(share_b * (1 - share_b) / n)
    assert abs(got - share_b) <= 4 * sd + 1e-12, (got, share_b)


def test_resampled_resume_is_exact(tmp_path):
    """A loader restored from a state taken mid-run continues with the same batches as the
    uninterrupted one, across an epoch boundary (epochs of 5 batches here)."""
    a = write_shards(tmp_path, "a", 3, per_shard=4)
    b = write_shards(tmp_path, "b", 2, per_shard=4)
    args = _args(f"{a}::{b}", "--dataset-resampled", "--train-num-samples", "40",
                 "--train-data-upsampling-factors", "1::3")
    data = get_data(args, image_size=8)
    it = iter(data)
    for _ in range(3):
        next(it)
    state = data.state_dict()
    want = [next(it) for _ in range(6)]
    again = get_data(args, image_size=8)
    again.load_state_dict(state)
    it = iter(again)
    got = [next(it) for _ in range(6)]
    assert [g["texts"] for g in got] == [w["texts"] for w in want]
    assert all(torch.equal(g["images"], w["images"]) for g, w in zip(got, want))
    # with replacement: the same shard comes back within the run
    texts = [t for w in want for t in w["texts"]]
    assert len(set(texts)) < len(texts)


@pytest.mark.parametrize("extra, message", [
    (["--train-data-upsampling-factors", "1::2"], "needs --dataset-resampled"),
    (["--train-data-upsampling-factors", "1::2::3", "--dataset-resampled"], "3 factor(s)"),
    (["--train-data-upsampling-factors", "1::x", "--dataset-resampled"], "not a number"),
])
def test_bad_mixture_flags_are_refused(tmp_path, capsys, extra, message):
    from clippo.train.main import main
    a = write_shards(tmp_path, "a", 1)
    b = write_shards(tmp_path, "b", 1)
    assert main(["--train-data", f"{a}::{b}", "--train-num-samples", "8", "--model", "Ti/16",
                 "--width", "32", "--depth", "1", "--heads", "2", "--mlp-dim", "64",
                 "--image-size", "32", "--steps", "1", "--workers", "0", "--no-progress",
                 "--output", str(tmp_path / "run"), *extra]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_resampling_is_for_webdataset(tmp_path, capsys):
    from clippo.train.main import main
    assert main(["--train-data", "builtin", "--dataset-resampled", "--steps", "1",
                 "--output", str(tmp_path / "run")]) == 1
    assert "for WebDataset shards only" in capsys.readouterr().err
