"""The trainer's global sample position: OpenCLIP's effective batch (batch x accum x world),
resuming with other --workers or another number of processes, augmentations seeded by
(seed, epoch, sample), the epoch of a step, and local WebDataset shards read by index."""
import io
import logging
import tarfile
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from clippo.train import parse_args
from clippo.train.data import GlobalBatchSampler, get_data
from clippo.train.main import TrainError, check_world_size_change

pytestmark = pytest.mark.filterwarnings("ignore:'set_vital' is deprecated")


def _png(rng, size=40):
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def csv_data(tmp_path_factory):
    """A CSV of 31 noise photos (so that every crop shows) and one missing file (row 31)."""
    root = tmp_path_factory.mktemp("csv")
    rng = np.random.default_rng(0)
    rows = ["filepath\ttitle"]
    for i in range(31):
        (root / f"{i}.png").write_bytes(_png(rng))
        rows.append(f"{i}.png\tphoto {i}")
    rows.append("gone.png\ta photo that is not there")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return root / "train.csv"


def _args(*extra):
    return parse_args(["--model", "mu/8", "--image-size", "32", "--out-dim", "16",
                       "--no-progress", "--device", "cpu", *extra])


def _take(data, n):
    it = iter(data)
    return [next(it) for _ in range(n)]


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["texts"] == y["texts"] and x["skipped"] == y["skipped"]
        assert torch.equal(x["images"], y["images"])


def test_effective_batch_is_batch_times_accum_times_world():
    """OpenCLIP's rule: each rank takes accum_freq micro-batches of batch_size per step, and
    one step of all ranks is the next batch x accum x world samples of the global order."""
    n, batch, accum, world = 50, 3, 2, 2
    samplers = [GlobalBatchSampler(n, batch * accum * world, rank=r, world_size=world,
                                   accum_freq=accum, seed=4) for r in range(world)]
    assert samplers[0].global_batch == 12
    streams = [iter(s) for s in samplers]
    order = np.concatenate([np.random.default_rng([4, e]).permutation(n) for e in range(3)])
    for step in range(8):
        taken = []
        for stream in streams:
            micro = [next(stream) for _ in range(accum)]
            assert all(len(m) == batch for m in micro)
            taken += [i for m in micro for _, i, _ in m]
        assert sorted(taken) == sorted(order[12 * step:12 * step + 12].tolist())


@pytest.mark.parametrize("before, after", [(2, 0), (0, 2)])
def test_resume_with_other_workers_continues_exactly(csv_data, before, after):
    """Workers 2 -> 0 and 0 -> 2: the resumed batches (random crops included) equal the
    uninterrupted run's; no DataLoader state is involved."""
    flags = ["--train-data", str(csv_data), "--batch-size", "4", "--accum-freq", "2",
             "--random-resized-crop", "--seed", "7"]
    want = _take(get_data(_args(*flags, "--workers", str(before)), 32), 12)
    first = get_data(_args(*flags, "--workers", str(before)), 32)
    head = _take(first, 6)  # 3 steps
    state = first.state_dict()
    resumed = get_data(_args(*flags, "--workers", str(after)), 32)
    resumed.load_state_dict(state)
    _same(head + _take(resumed, 6), want)
    # the crops are random (not a plain resize) and depend on the epoch: a photo seen in
    # epochs 0 and 1 (32 samples each, 48 taken) is cropped differently
    from clippo.data.transforms import ImageTransform, load_image
    texts = [t for b in want for t in b["texts"]]
    twice = next(t for t in texts if texts.count(t) == 2)
    plain = ImageTransform(32)(load_image(csv_data.parent / f"{twice.split()[1]}.png"))
    seen = [img for b in want for img, t in zip(b["images"], b["texts"]) if t == twice]
    assert len(seen) == 2 and not torch.equal(seen[0], seen[1])
    assert not all(torch.equal(img, plain) for img in seen)


def test_crops_are_a_function_of_seed_epoch_and_sample(csv_data):
    """A sample's crop does not depend on the worker that loads it or on what it loaded
    before: loading one sample alone gives the crop it had in the stream."""
    from clippo.train.data import IMAGE_TEXT, SampleDataset, _image_text_dataset
    args = _args("--train-data", str(csv_data), "--random-resized-crop", "--seed", "7",
                 "--batch-size", "4", "--workers", "2")
    batches = _take(get_data(args, 32), 3)
    sampler = GlobalBatchSampler(32, 4, seed=7)
    refs = sampler.refs(0, 12)
    alone = SampleDataset({IMAGE_TEXT: _image_text_dataset(args, "csv", 32)}, seed=7)
    got = [alone[ref][1] for ref in reversed(refs)][::-1]
    images = [im for b in batches for im in b["images"]]
    assert len(images) == sum(g is not None for g in got)
    assert all(torch.equal(a, g[0]) for a, g in zip(images, [g for g in got if g]))


@pytest.mark.parametrize("world", [1, 4])
def test_resume_on_another_world_size_sees_every_sample_once(csv_data, world):
    """2 processes (batch 4, accum 2: 16 per step) stop after one step; the run resumed on 1
    process with batch 8 or on 4 with batch 2 takes the rest of the epoch: every sample of
    the epoch exactly once, and its step the same 16 samples as the uninterrupted run's."""
    flags = ["--train-data", str(csv_data), "--accum-freq", "2", "--workers", "0"]
    ranks = [get_data(_args(*flags, "--batch-size", "4"), 32, rank=r, world_size=2)
             for r in range(2)]
    first = [b for data in ranks for b in _take(data, 2)]
    state = ranks[0].state_dict()
    assert state["positions"] == [16] and ranks[1].state_dict() == state
    resumed = [get_data(_args(*flags, "--batch-size", str(8 // world)), 32, rank=r,
                        world_size=world) for r in range(world)]
    for data in resumed:
        data.load_state_dict(state)
    second = [b for data in resumed for b in _take(data, 2)]
    assert all(d.state_dict()["positions"] == [32] for d in resumed)
    captions = [t for b in first + second for t in b["texts"]]
    assert sorted(captions) == sorted(f"photo {i}" for i in range(31))  # each once
    assert sum(b["skipped"] for b in first + second) == 1  # the missing row
    order = np.random.default_rng([0, 0]).permutation(32)
    assert sorted(t for b in second for t in b["texts"]) == sorted(
        f"photo {i}" for i in order[16:] if i < 31)


@pytest.mark.parametrize("world, batch", [(1, 8), (2, 4), (4, 2)])
def test_text_pairs_take_the_same_share_of_the_global_batch_on_any_world_size(csv_data,
                                                                              world, batch):
    """--text-pair-fraction 0.25 of a global batch of 16 is 4 pairs and 12 photos whatever the
    split over processes (per rank, batch 2 would give 1 + 1), every micro-batch holding
    --batch-size samples."""
    args = _args("--train-data", str(csv_data), "--text-pairs", "builtin",
                 "--train-num-samples", "50", "--batch-size", str(batch), "--accum-freq", "2",
                 "--workers", "0")
    ranks = [get_data(args, 32, rank=r, world_size=world) for r in range(world)]
    assert all(d.global_batch == 16 and d.image_batch == 12 and d.pair_batch == 4
               for d in ranks)
    refs = []
    for data in ranks:
        image, pairs = data.samplers
        for j in range(2):
            micro = image.micro_batch(16 * 0, j) + pairs.micro_batch(0, j)
            assert len(micro) == batch
            refs += micro
    want_images = GlobalBatchSampler(32, 12, seed=0).refs(0, 12)
    want_pairs = GlobalBatchSampler(50, 4, seed=1, source=1).refs(0, 4)
    assert sorted(refs) == sorted(want_images + want_pairs)


def test_another_world_size_needs_the_same_global_batch():
    ckpt = {"world_size": 2, "args": {"batch_size": 4, "accum_freq": 2}}
    env = SimpleNamespace(world_size=2)
    assert check_world_size_change(ckpt, SimpleNamespace(batch_size=4, accum_freq=2), env) \
        is None
    note = check_world_size_change(ckpt, SimpleNamespace(batch_size=8, accum_freq=2),
                                   SimpleNamespace(world_size=1))
    assert "no longer bit-exact" in note and "(16)" in note
    assert check_world_size_change(ckpt, SimpleNamespace(batch_size=1, accum_freq=4),
                                   SimpleNamespace(world_size=4))
    assert "no longer bit-exact" in check_world_size_change(  # same processes, other split
        ckpt, SimpleNamespace(batch_size=2, accum_freq=4), env)
    with pytest.raises(TrainError, match=r"global batch is 16 .*this run's is 8 .*"
                                         r"--batch-size 8 or --accum-freq 4"):
        check_world_size_change(ckpt, SimpleNamespace(batch_size=4, accum_freq=2),
                                SimpleNamespace(world_size=1))
    with pytest.raises(TrainError, match="no per-rank"):
        check_world_size_change(ckpt, SimpleNamespace(batch_size=3, accum_freq=1),
                                SimpleNamespace(world_size=3))


def test_epoch_of_small_datasets(csv_data):
    """A small dataset and a batch of 64 (issue: `step 10, epoch 9` on 40 pairs): step s has
    taken 64 s samples, so its last one is in epoch (64 s - 1) // 32."""
    data = get_data(_args("--train-data", str(csv_data), "--batch-size", "64", "--workers",
                          "0"), 32)
    it = iter(data)
    epochs = []
    for _ in range(3):
        next(it)
        epochs.append(data.epoch())
    assert epochs == [(64 * s - 1) // 32 for s in (1, 2, 3)] == [1, 3, 5]
    assert data.steps_per_epoch == pytest.approx(0.5)


def _tar(path, samples):
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_indexed_shards_match_the_webdataset_reader(tmp_path, caplog):
    """Local shards read by index give webdataset's samples; a garbage shard and the cut-off
    end of a truncated one are left out with a warning."""
    import webdataset as wds

    from clippo.data.wds import IndexedShards, decode_sample
    from clippo.data.transforms import ImageTransform
    rng = np.random.default_rng(1)
    for s in range(2):
        _tar(tmp_path / f"s-{s}.tar", [(f"{s}{i:03d}", {"png": _png(rng, 20),
                                                        "txt": f"shard {s} #{i}".encode()})
                                       for i in range(5)])
    (tmp_path / "s-2.tar").write_bytes(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    _tar(tmp_path / "s-3.tar", [(f"3{i:03d}", {"png": _png(rng, 20), "txt": b"cut"})
                                for i in range(4)])
    with tarfile.open(tmp_path / "s-3.tar") as tar:
        cut = tar.getmembers()[-4].offset_data + 10  # inside the third sample's photo
    data = (tmp_path / "s-3.tar").read_bytes()
    (tmp_path / "s-3.tar").write_bytes(data[:cut])
    with caplog.at_level(logging.WARNING, logger="clippo.data"):
        ds = IndexedShards(str(tmp_path / "s-{0..3}.tar"), 16)
    assert str(tmp_path / "s-2.tar") in caplog.text and str(tmp_path / "s-3.tar") in caplog.text
    assert ds.unreadable == [str(tmp_path / "s-2.tar")]
    assert len(ds) == 12  # 2 x 5, and the 2 whole samples before the cut
    ref = list(wds.tarfile_samples([{"url": str(tmp_path / f"s-{s}.tar")} for s in range(2)]))
    transform = ImageTransform(16)
    for i, sample in enumerate(ref):
        want_img, want_txt = decode_sample(sample, transform)
        got_img, got_txt = ds[i]
        assert got_txt == want_txt and torch.equal(got_img, want_img)


def test_trainer_resumes_with_other_workers(csv_data, tmp_path):
    """`clippo train --resume latest` with --workers 0 on a checkpoint written with 2 workers
    (random crops on): the metrics and the final weights equal the uninterrupted run's."""
    import json

    from clippo.train import checkpoint as ck
    from clippo.train import run
    flags = ["--train-data", str(csv_data), "--batch-size", "4", "--accum-freq", "2",
             "--random-resized-crop", "--steps", "4", "--save-every", "2", "--log-every", "1",
             "--seed", "5", "--lr", "1e-3", "--output", str(tmp_path)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(_args(*flags, "--workers", "2"))
        want = (tmp_path / "metrics.jsonl").read_text().splitlines()
        final = ck.load_checkpoint(tmp_path / "checkpoints" / ck.checkpoint_name(4))["task"]
        (tmp_path / "checkpoints" / ck.checkpoint_name(4)).unlink()
        summary = run(_args(*flags, "--workers", "0", "--resume", "latest"))
    finally:
        torch.set_num_threads(threads)
    assert summary["start_step"] == 2
    timing = {"samples_per_s", "data_time", "step_time"}

    def strip(lines):
        return [{k: v for k, v in json.loads(x).items() if k not in timing} for x in lines]
    assert strip((tmp_path / "metrics.jsonl").read_text().splitlines()) == strip(want)
    again = ck.load_checkpoint(tmp_path / "checkpoints" / ck.checkpoint_name(4))["task"]
    assert all(torch.equal(final[k], again[k]) for k in final)
