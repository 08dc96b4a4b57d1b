"""Image transforms, the CSV / WebDataset / text-pair readers and the collates, on small files
the tests write: exact pixels and captions back, bad samples skipped and counted, clear errors
naming file and line, shard splitting, epoch length and exact resume."""
import io
import json
import logging
import sys
import tarfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from clippo.data.collate import Skipped

from clippo.data import (CsvDataset, DataFormatError, ImageDecodeError, ImageTransform,
                         TextPairDataset, WebImageTextDataset, collate_image_text,
                         collate_text_pairs, load_image, read_text_pairs, try_load_image)

S = 16


def solid(color, size=(24, 20), mode="RGB"):
    return Image.new(mode, size, color)


def encode(img, fmt):
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def pixel_colors(image):
    """Set of distinct RGB values of a uint8 [3, H, W] tensor."""
    return {tuple(p) for p in image.permute(1, 2, 0).reshape(-1, 3).tolist()}


# --- transforms ------------------------------------------------------------------------------

def test_plain_resize_matches_torch_antialiased_bilinear():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(45, 70, 3), dtype=np.uint8)
    out = ImageTransform(S)(Image.fromarray(arr))
    assert out.dtype == torch.uint8 and out.shape == (3, S, S)
    ref = F.interpolate(torch.from_numpy(arr).permute(2, 0, 1)[None].double(), size=(S, S),
                        mode="bilinear", antialias=True, align_corners=False)[0]
    # Pillow and torch both implement antialiased bilinear: equal up to rounding
    assert (out.double() - ref).abs().max() <= 2.0
    assert ImageTransform((S, 2 * S))(Image.fromarray(arr)).shape == (3, S, 2 * S)


def test_modes_convert_to_rgb():
    gray = ImageTransform(S)(solid(77, mode="L"))
    assert pixel_colors(gray) == {(77, 77, 77)}
    rgba = ImageTransform(S)(solid((10, 20, 30, 0), mode="RGBA"))
    assert pixel_colors(rgba) == {(10, 20, 30)}
    pal = Image.new("P", (8, 8), 3)
    pal.putpalette([0, 0, 0, 1, 1, 1, 2, 2, 2, 200, 100, 50] + [0] * 756)
    img = load_image(encode(pal, "PNG"))
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (200, 100, 50)


def test_random_resized_crop_boxes_follow_scale_and_ratio():
    t = ImageTransform(S, random_resized_crop=True, scale=(0.5, 0.8), ratio=(0.75, 1.25))
    torch.manual_seed(0)
    w, h = 200, 150
    for _ in range(200):
        left, top, right, bottom = t.crop_box(w, h)
        assert 0 <= left < right <= w and 0 <= top < bottom <= h
        area = (right - left) * (bottom - top) / (w * h)
        aspect = (right - left) / (bottom - top)
        assert 0.5 - 0.02 <= area <= 0.8 + 0.02
        assert 0.75 - 0.02 <= aspect <= 1.25 + 0.02
    # the whole image when scale and ratio allow only that: same as the plain resize
    arr = np.random.default_rng(1).integers(0, 256, size=(30, 40, 3), dtype=np.uint8)
    full = ImageTransform(S, random_resized_crop=True, scale=(1.0, 1.0), ratio=(4 / 3, 4 / 3))
    assert full.crop_box(40, 30) == (0, 0, 40, 30)
    assert torch.equal(full(Image.fromarray(arr)), ImageTransform(S)(Image.fromarray(arr)))
    # impossible constraints fall back to a centre crop at the nearest allowed ratio
    tall = ImageTransform(S, random_resized_crop=True, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert tall.crop_box(100, 20) == (40, 0, 60, 20)


def test_bad_transform_arguments():
    for kwargs in ({"scale": (0.0, 1.0)}, {"scale": (0.9, 0.5)}, {"ratio": (2.0, 1.0)},
                   {"interpolation": "cubic-ish"}):
        with pytest.raises(ValueError):
            ImageTransform(S, random_resized_crop=True, **kwargs)
    with pytest.raises(ValueError):
        ImageTransform(0)


def test_jpeg_draft_decodes_close_to_full_decode():
    rng = np.random.default_rng(2)
    base = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    big = Image.fromarray(base).resize((512, 384), Image.BILINEAR)
    data = encode(big, "JPEG")
    t = ImageTransform(S)
    drafted = t(load_image(data, draft_size=t.draft_size))
    full = t(load_image(data))
    assert load_image(data, draft_size=(32, 32)).size[0] < 512  # the draft did shrink it
    assert (drafted.float() - full.float()).abs().mean() < 3.0


def test_undecodable_images(tmp_path):
    good = encode(solid((1, 2, 3)), "JPEG")
    with pytest.raises(ImageDecodeError, match="cannot decode image"):
        load_image(b"definitely not an image")
    with pytest.raises(ImageDecodeError):
        load_image(good[: len(good) // 2])  # truncated JPEG
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(ImageDecodeError, match="bad.png"):
        load_image(tmp_path / "bad.png")
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png")
    assert try_load_image(tmp_path / "missing.png") is None
    assert try_load_image(b"") is None
    assert try_load_image(tmp_path) is None  # a directory
    assert try_load_image(good).size == (24, 20)


# --- collate ---------------------------------------------------------------------------------

def test_collate_image_text_drops_and_counts_none():
    a, b = torch.full((3, 4, 4), 1, dtype=torch.uint8), torch.full((3, 4, 4), 2, dtype=torch.uint8)
    out = collate_image_text([None, (a, "x"), None, (b, "y")])
    assert out["skipped"] == 2 and out["texts"] == ["x", "y"]
    assert torch.equal(out["images"], torch.stack([a, b]))
    empty = collate_image_text([None, None])
    assert empty["skipped"] == 2 and empty["texts"] == [] and empty["images"].shape[0] == 0
    with pytest.raises(ValueError, match="share a shape"):
        collate_image_text([(a, "x"), (torch.zeros(3, 5, 5, dtype=torch.uint8), "y")])
    with pytest.raises(TypeError):
        collate_image_text([(a.float(), "x")])
    with pytest.raises(TypeError):
        collate_image_text([(a, 3)])


def test_collate_text_pairs():
    out = collate_text_pairs([("a", "b"), None, ("c", "d")])
    assert out == {"texts_a": ["a", "c"], "texts_b": ["b", "d"], "skipped": 1}
    with pytest.raises(TypeError):
        collate_text_pairs([("a", None)])


# --- CSV -------------------------------------------------------------------------------------

COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]


@pytest.fixture
def csv_tree(tmp_path):
    (tmp_path / "imgs").mkdir()
    for i, c in enumerate(COLORS[:3]):
        solid(c).save(tmp_path / "imgs" / f"{i}.png")
    abs_path = tmp_path / "elsewhere.png"
    solid(COLORS[3]).save(abs_path)
    (tmp_path / "imgs" / "corrupt.jpg").write_bytes(b"not a jpeg")
    return tmp_path, abs_path


def write_csv(path, rows, sep=","):
    import csv
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, delimiter=sep).writerows(rows)


@pytest.mark.parametrize("sep", [",", "\t"])
def test_csv_reads_images_and_captions(csv_tree, sep):
    root, abs_path = csv_tree
    rows = [["id", "filepath", "title"],
            ["0", "imgs/0.png", "a red thing, with a comma"],
            ["1", "imgs/1.png", 'green "quoted"\nover two lines'],
            ["2", "imgs/2.png", "blue"],
            ["3", str(abs_path), "yellow, absolute path"]]
    write_csv(root / "train.csv", rows, sep)
    ds = CsvDataset(root / "train.csv", image_size=S, sep=sep)
    assert len(ds) == 4
    for i in range(4):
        image, caption = ds[i]
        assert caption == rows[i + 1][2]
        assert image.shape == (3, S, S) and image.dtype == torch.uint8
        assert pixel_colors(image) == {COLORS[i]}


def test_csv_custom_keys_and_skips(csv_tree):
    root, _ = csv_tree
    rows = [["caption", "path"], ["red", "imgs/0.png"], ["", "imgs/1.png"], ["   ", "imgs/2.png"],
            ["missing", "imgs/nope.png"], ["corrupt", "imgs/corrupt.jpg"], ["blue", "imgs/2.png"]]
    write_csv(root / "pairs.csv", rows)
    ds = CsvDataset(root / "pairs.csv", image_size=S, img_key="path", caption_key="caption")
    items = [ds[i] for i in range(len(ds))]
    assert [isinstance(it, Skipped) for it in items] == [False, True, True, True, True, False]
    assert items[3] == str(root / "imgs" / "nope.png")  # a skipped sample names its file
    loader = DataLoader(ds, batch_size=4, collate_fn=collate_image_text)
    batches = list(loader)
    assert [b["skipped"] for b in batches] == [3, 1]
    assert batches[1]["skipped_names"] == [str(root / "imgs" / "corrupt.jpg")]
    assert len(batches[0]["skipped_names"]) == 3 and "row 3" in batches[0]["skipped_names"][1]
    assert [b["texts"] for b in batches] == [["red"], ["blue"]]
    assert sum(b["images"].shape[0] for b in batches) == 2


def test_csv_errors_name_file_and_line(tmp_path):
    p = tmp_path / "bad.csv"
    write_csv(p, [["filepath", "text"], ["a.png", "x"]])
    with pytest.raises(ValueError) as e:
        CsvDataset(p, image_size=S)
    msg = str(e.value)
    assert "bad.csv" in msg and "'title'" in msg and "'text'" in msg and "filepath" in msg
    p.write_text("filepath,title\na.png,one\nb.png,two,extra\n")
    with pytest.raises(DataFormatError, match=r"bad\.csv:3: 3 fields, the header has 2"):
        CsvDataset(p, image_size=S)
    p.write_text("filepath,title\n\n")
    with pytest.raises(ValueError, match="no rows"):
        CsvDataset(p, image_size=S)
    p.write_text("")
    with pytest.raises(ValueError, match="empty file"):
        CsvDataset(p, image_size=S)
    p.write_bytes(b"filepath,title\na.png,\xff\xfe bad utf-8\n")
    with pytest.raises(ValueError, match="UTF-8"):
        CsvDataset(p, image_size=S)
    with pytest.raises(FileNotFoundError):
        CsvDataset(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="one character"):
        CsvDataset(p, sep=";;")


def test_csv_backslash_t_separator_means_tab(csv_tree):
    root, _ = csv_tree
    write_csv(root / "t.tsv", [["filepath", "title"], ["imgs/0.png", "a, b"]], sep="\t")
    ds = CsvDataset(root / "t.tsv", image_size=S, sep="\\t")
    assert ds[0][1] == "a, b"


# --- WebDataset ------------------------------------------------------------------------------

def write_shard(path, samples):
    """samples: list of (key, {ext: bytes})."""
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def color_of(index):
    return (index * 7 % 256, index * 13 % 256, index * 29 % 256)


def make_shards(tmp_path, n_shards=4, per_shard=5):
    """Lossless images whose colour encodes the sample index; captions 'sample <i>'."""
    formats = [("png", "PNG"), ("webp", "WEBP")]
    for s in range(n_shards):
        samples = []
        for j in range(per_shard):
            i = s * per_shard + j
            ext, fmt = formats[i % 2]
            members = {ext: encode(solid(color_of(i)), fmt)}
            if i % 3 == 0:
                members["json"] = json.dumps({"caption": f"sample {i}", "x": 1}).encode()
            else:
                members["txt"] = f"sample {i}".encode()
            samples.append((f"{i:05d}", members))
        write_shard(tmp_path / f"shard-{s:03d}.tar", samples)
    return str(tmp_path / ("shard-{000..%03d}.tar" % (n_shards - 1)))


def lossless_webp(monkeypatch):
    orig = Image.Image.save

    def save(self, fp, format=None, **kw):
        if format == "WEBP":
            kw["lossless"] = True
        return orig(self, fp, format=format, **kw)
    monkeypatch.setattr(Image.Image, "save", save)


def caption_ids(items):
    return [int(t.split()[1]) for t in items]


def test_wds_reads_every_sample_once_with_pixels(tmp_path, monkeypatch):
    lossless_webp(monkeypatch)
    pattern = make_shards(tmp_path)
    ds = WebImageTextDataset(pattern, image_size=S, shuffle_buffer=8)
    items = list(ds)
    assert sorted(caption_ids(t for _, t in items)) == list(range(20))
    for image, text in items:
        assert image.shape == (3, S, S)
        assert pixel_colors(image) == {color_of(int(text.split()[1]))}
    # "::"-joined patterns and explicit lists select the same shards
    a = str(tmp_path / "shard-{000..001}.tar") + "::" + str(tmp_path / "shard-003.tar")
    got = caption_ids(t for _, t in WebImageTextDataset(a, image_size=S, shuffle_buffer=0))
    assert sorted(got) == list(range(10)) + list(range(15, 20))
    ordered = WebImageTextDataset([str(tmp_path / "shard-002.tar")], image_size=S,
                                  shuffle_buffer=0, shuffle_shards=False)
    assert caption_ids(t for _, t in ordered) == list(range(10, 15))


def test_wds_skips_and_counts_bad_samples(tmp_path, caplog):
    good = encode(solid((9, 9, 9)), "PNG")
    write_shard(tmp_path / "a.tar", [
        ("k0", {"png": good, "txt": b"fine"}),
        ("k1", {"jpg": b"corrupt", "txt": b"broken image"}),
        ("k2", {"png": good, "txt": b"   "}),                     # empty caption
        ("k3", {"png": good}),                                    # no caption
        ("k4", {"txt": b"no image"}),
        ("k5", {"png": good, "json": b"{not json"}),
        ("k6", {"png": good, "json": json.dumps({"text": "json text"}).encode()}),
        ("k7", {"png": good, "txt": b"\xff\xfe"}),                # not UTF-8
    ])
    ds = WebImageTextDataset(str(tmp_path / "a.tar"), image_size=S, batch_size=3,
                             shuffle_buffer=0)
    batches = list(DataLoader(ds, batch_size=None))
    # batches of 3 in tar order: (ok, corrupt, empty) (no caption, no image, bad json)
    # (json "text", not UTF-8)
    assert [b["skipped"] for b in batches] == [2, 3, 1]
    assert [b["texts"] for b in batches] == [["fine"], [], ["json text"]]
    assert sum(b["images"].shape[0] for b in batches) == 2
    # a truncated shard: its readable samples come through, the rest is skipped with a warning
    data = (tmp_path / "a.tar").read_bytes()
    with tarfile.open(tmp_path / "a.tar") as tar:
        cut = tar.getmembers()[4].offset_data + 10  # inside k2.png's bytes
    (tmp_path / "b.tar").write_bytes(data[:cut])
    with caplog.at_level(logging.WARNING, logger="clippo.data"):
        items = list(WebImageTextDataset(str(tmp_path / "b.tar"), image_size=S,
                                         shuffle_buffer=0))
    assert [it if isinstance(it, Skipped) else it[1] for it in items] == \
        ["fine", str(tmp_path / "b.tar") + ":k1"]  # k0, corrupt k1
    assert "skipping the rest of a shard" in caplog.text


def test_wds_epoch_length_split_and_determinism(tmp_path):
    pattern = make_shards(tmp_path, n_shards=4, per_shard=5)
    # 2 ranks x 2 workers, num_samples 30 at batch 2: ceil(30 / 4) = 8 batches per rank,
    # 4 per worker, cycling over the shards as needed
    seen = []
    for rank in range(2):
        ds = WebImageTextDataset(pattern, image_size=S, batch_size=2, num_samples=30,
                                 num_workers=2, rank=rank, world_size=2, shuffle_buffer=0)
        assert len(ds) == 8
        batches = list(DataLoader(ds, batch_size=None, num_workers=2))
        assert len(batches) == 8 and all(len(b["texts"]) == 2 for b in batches)
        seen.append(caption_ids(t for b in batches for t in b["texts"]))
    # each of the 4 readers holds one shard per pass and takes 8 samples: its 5, then 3 from
    # its shard of the next pass (no sample shuffle here, which would mix the two shards);
    # the first passes together cover every sample
    all_ids = seen[0] + seen[1]
    assert len(all_ids) == 32 and set(all_ids) == set(range(20))
    # one pass: same seed and epoch, same order; another epoch or seed, another order
    def run(epoch, seed=0):
        ds = WebImageTextDataset(pattern, image_size=S, seed=seed, shuffle_buffer=6)
        ds.set_epoch(epoch)
        return caption_ids(t for _, t in ds)
    assert run(0) == run(0)
    assert run(1) != run(0) and sorted(run(1)) == list(range(20))
    assert run(0, seed=1) != run(0)


def test_wds_disjoint_shards_per_worker_in_one_pass(tmp_path):
    pattern = make_shards(tmp_path, n_shards=4, per_shard=3)
    ds = WebImageTextDataset(pattern, image_size=S, num_workers=2, shuffle_buffer=0)
    items = list(DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate_image_text))
    ids = caption_ids(t for b in items for t in b["texts"])
    assert sorted(ids) == list(range(12))


def test_wds_configuration_errors(tmp_path, monkeypatch):
    pattern = make_shards(tmp_path, n_shards=2, per_shard=1)
    with pytest.raises(FileNotFoundError, match="shard-00"):
        WebImageTextDataset(str(tmp_path / "shard-{000..003}.tar"))
    with pytest.raises(ValueError, match="2 shard"):
        WebImageTextDataset(pattern, num_workers=2, world_size=2, rank=0)
    with pytest.raises(ValueError, match="num_samples"):
        WebImageTextDataset(pattern, resampled=True)
    ds = WebImageTextDataset(pattern, image_size=S)
    with pytest.raises(TypeError, match="num_samples"):
        len(ds)
    # iterated in a DataLoader worker of 2 while built for one reader (patched worker info:
    # a real failing worker pool takes seconds to shut down when collected later)
    import types

    import clippo.data.wds as wds_module
    monkeypatch.setattr(wds_module, "get_worker_info",
                        lambda: types.SimpleNamespace(id=0, num_workers=2))
    with pytest.raises(ValueError, match="built for num_workers=1"):
        next(iter(ds))
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "webdataset", None)
    with pytest.raises(ImportError, match="pip install webdataset"):
        WebImageTextDataset(pattern)


def test_wds_empty_shards_end_a_cycling_reader(tmp_path, caplog):
    write_shard(tmp_path / "e0.tar", [])
    write_shard(tmp_path / "e1.tar", [])
    for resampled in (False, True):
        ds = WebImageTextDataset(str(tmp_path / "e{0..1}.tar"), image_size=S, num_samples=10,
                                 resampled=resampled)
        with caplog.at_level(logging.WARNING, logger="clippo.data"):
            assert list(ds) == []
    assert "gave no samples" in caplog.text


@pytest.mark.parametrize("num_workers", [0, 2])
def test_wds_stateful_dataloader_resumes_exactly(tmp_path, num_workers):
    from torchdata.stateful_dataloader import StatefulDataLoader
    pattern = make_shards(tmp_path, n_shards=4, per_shard=6)

    def loader():
        ds = WebImageTextDataset(pattern, image_size=S, batch_size=3, num_samples=24,
                                 num_workers=num_workers, shuffle_buffer=5, seed=3)
        ds.set_epoch(2)
        return StatefulDataLoader(ds, batch_size=None, num_workers=num_workers)

    full = [b["texts"] for b in loader()]
    assert len(full) == 8
    first = loader()
    it = iter(first)
    head = [next(it)["texts"] for _ in range(3)]
    state = first.state_dict()
    del it
    resumed = loader()
    resumed.load_state_dict(state)
    tail = [b["texts"] for b in resumed]
    assert head + tail == full


# --- text pairs ------------------------------------------------------------------------------

def test_text_pairs_from_plain_text(tmp_path):
    p = tmp_path / "c4.txt"
    p.write_text("First one.\nSecond one.\n  Third one.  \n\nLonely line.\n\n\nA.\nB.\n")
    assert read_text_pairs(p) == [("First one.", "Second one."), ("Second one.", "Third one."),
                                  ("A.", "B.")]
    ds = TextPairDataset(p)
    assert len(ds) == 3 and ds[2] == ("A.", "B.")
    batch = collate_text_pairs([ds[i] for i in range(3)])
    assert batch["texts_a"] == ["First one.", "Second one.", "A."] and batch["skipped"] == 0


def test_text_pairs_from_jsonl(tmp_path):
    p = tmp_path / "pairs.jsonl"
    lines = [{"text_a": "q", "text_b": "r"}, {"sentences": ["s1", "s2", "s3"]},
             {"sentences": ["only"]}, {"text_a": "", "text_b": "empty side"}]
    p.write_text("\n".join(json.dumps(x) for x in lines[:2]) + "\n\n"
                 + "\n".join(json.dumps(x) for x in lines[2:]) + "\n")
    assert read_text_pairs(p) == [("q", "r"), ("s1", "s2"), ("s2", "s3"), ("", "empty side")]
    ds = TextPairDataset(p)
    assert [ds[i] for i in range(len(ds))] == [("q", "r"), ("s1", "s2"), ("s2", "s3"), None]
    assert collate_text_pairs([ds[i] for i in range(len(ds))])["skipped"] == 1
    # format override: a .txt file read as JSON Lines
    q = tmp_path / "pairs.txt"
    q.write_text(json.dumps(lines[0]) + "\n")
    assert read_text_pairs(q, format="jsonl") == [("q", "r")]


@pytest.mark.parametrize("content, line, message", [
    ('{"text_a": "a", "text_b": "b"}\n{"text_a": "a"\n', 2, "invalid JSON"),
    ('\n\n["a", "b"]\n', 3, "expected a JSON object"),
    ('{"text_a": "a", "text_b": "b"}\n{"foo": 1}\n', 2, "expected keys"),
    ('{"sentences": "not a list"}\n', 1, "list of strings"),
    ('{"text_a": 1, "text_b": "b"}\n', 1, "must be strings"),
])
def test_text_pairs_malformed_jsonl_names_file_and_line(tmp_path, content, line, message):
    p = tmp_path / "bad.jsonl"
    p.write_text(content)
    with pytest.raises(ValueError, match=rf"bad\.jsonl:{line}: .*{message}"):
        TextPairDataset(p)


def test_text_pairs_empty_and_bad_files(tmp_path):
    p = tmp_path / "one.txt"
    p.write_text("single\n\nlines\n")
    with pytest.raises(ValueError, match="no sentence pairs"):
        TextPairDataset(p)
    p.write_bytes(b"ok\n\xff\xfe\n")
    with pytest.raises(ValueError, match="UTF-8"):
        TextPairDataset(p)
    with pytest.raises(ValueError, match="format"):
        TextPairDataset(p, format="csv")


def test_wds_set_epoch_reaches_persistent_workers(tmp_path):
    pattern = make_shards(tmp_path, n_shards=4, per_shard=3)

    def dataset(epoch):
        ds = WebImageTextDataset(pattern, image_size=S, num_workers=2, shuffle_buffer=4)
        ds.set_epoch(epoch)
        return ds

    def texts(loader):
        return [t for b in loader for t in b["texts"]]

    persistent_ds = dataset(0)
    persistent = DataLoader(persistent_ds, batch_size=2, num_workers=2, persistent_workers=True,
                            collate_fn=collate_image_text)
    epoch0 = texts(persistent)
    persistent_ds.set_epoch(1)
    epoch1 = texts(persistent)
    fresh = [texts(DataLoader(dataset(e), batch_size=2, num_workers=2,
                              collate_fn=collate_image_text)) for e in (0, 1)]
    assert [epoch0, epoch1] == fresh and epoch0 != epoch1
