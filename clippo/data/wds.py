"""Image-text pairs from WebDataset tar shards (OpenCLIP's --train-data "shards-{000..099}.tar").

A sample is the group of tar members sharing a key: one image (.jpg / .jpeg / .png / .webp)
and a caption (.txt, or .json with a "caption" or "text" field). `urls` is a brace pattern,
several patterns joined by "::" (as OpenCLIP), or a list; the webdataset package reads the tars.

Each reader (rank x DataLoader worker) takes a disjoint share of the shards: the shard list is
shuffled by (seed, epoch) identically on every reader and reader k takes shards k, k + R, ...
(R readers; fewer shards than readers is an error unless `resampled`). Samples then pass a
shuffle buffer seeded by (seed, epoch, reader), so an epoch's order is reproducible.

Epoch length (`num_samples`, OpenCLIP's --train-num-samples): every reader yields the same
number of items, ceil(num_samples / (world x workers x batch)) batches (or samples when
batch_size is None), cycling over its shards if they run out, so all ranks take the same
number of steps. Without num_samples a reader makes one pass over its shards (ranks may then
differ in length). `resampled` draws shards with replacement (needs num_samples).

Skipping: an undecodable image, a sample without an image or caption, or an empty caption
becomes a Skipped ("shard:key") and is counted by collate_image_text in the batch's
"skipped". A shard that
cannot be opened or read to its end is reported with a warning and the rest of it is skipped
(its lost samples cannot be counted).

Batching: with batch_size the dataset yields collated batch dicts (use DataLoader(ds,
batch_size=None)); batches are formed before the skipped samples are dropped, so a batch holds
batch_size minus its "skipped" samples. Without it, it yields samples for the DataLoader to
batch with collate_image_text.

Resume (torchdata's StatefulDataLoader): the per-reader iterator is Stateful; its state is
(epoch, samples taken from the shuffled stream). Loading it rebuilds the same shuffled stream
and skips that many samples without decoding them, so resuming is exact as long as the shard
files, seed, world size and worker count are unchanged (the skip re-reads the tar bytes).
"""
import itertools
import logging
import math
import multiprocessing
import os
import random

from torch.utils.data import IterableDataset, get_worker_info

from clippo.data.collate import collate_image_text
from clippo.data.transforms import ImageTransform, load_and_transform

__all__ = ["WebImageTextDataset", "expand_shard_urls", "decode_sample", "IMAGE_KEYS"]

log = logging.getLogger("clippo.data")

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
_END = object()


def _webdataset():
    try:
        import webdataset
    except ImportError as e:
        raise ImportError("reading WebDataset shards needs the webdataset package: "
                          "pip install webdataset") from e
    return webdataset


def _is_local(url):
    return "://" not in url and not url.startswith("pipe:")


def expand_shard_urls(urls):
    """Brace-expanded list of shard URLs from a pattern ("a-{000..009}.tar", "::"-joined
    patterns) or a list of patterns; local files must exist."""
    wds = _webdataset()
    if isinstance(urls, (str, os.PathLike)):
        expanded = wds.shardlists.expand_urls(os.fspath(urls))
    else:
        expanded = [u for pattern in urls for u in wds.shardlists.expand_urls(os.fspath(pattern))]
    expanded = [u for u in expanded if u]
    if not expanded:
        raise ValueError(f"no shards in {urls!r}")
    missing = [u for u in expanded if _is_local(u) and not os.path.isfile(u)]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise FileNotFoundError(f"missing WebDataset shard(s): {missing[:3]}{more}")
    return expanded


def _caption_of(sample):
    if "txt" in sample:
        try:
            return sample["txt"].decode("utf-8")
        except UnicodeDecodeError:
            return None
    if "json" in sample:
        import json
        try:
            record = json.loads(sample["json"])
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        if isinstance(record, dict):
            for key in ("caption", "text"):
                if isinstance(record.get(key), str):
                    return record[key]
    return None


def decode_sample(sample, transform):
    """webdataset sample dict -> (uint8 image [3, S, S], caption) or a Skipped naming it."""
    from clippo.data.collate import Skipped
    name = f"{sample.get('__url__', '')}:{sample.get('__key__')}".lstrip(":")
    caption = _caption_of(sample)
    caption = caption.strip() if caption is not None else ""
    if not caption:
        log.debug("%s: no caption; skipped", sample.get("__key__"))
        return Skipped(f"{name} (no caption)")
    data = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
    if data is None:
        log.debug("%s: no image (%s); skipped", sample.get("__key__"), "/".join(IMAGE_KEYS))
        return Skipped(f"{name} (no image)")
    image = load_and_transform(data, transform)
    if image is None:
        return Skipped(name)
    return image, caption


def _warn_and_continue(exn):
    log.warning("WebDataset: skipping the rest of a shard after %s: %s",
                type(exn).__name__, exn)
    return True


class WebImageTextDataset(IterableDataset):
    """Iterable dataset over WebDataset shards (see the module docstring).

    rank / world_size default to torch.distributed's when it is initialised (read here, in
    the main process); num_workers is the DataLoader's worker count (checked when iterating),
    needed to size the epoch.
    """

    def __init__(self, urls, image_size=224, *, transform=None, num_samples=None,
                 batch_size=None, num_workers=0, shuffle_buffer=1000, shuffle_initial=None,
                 shuffle_shards=True, resampled=False, seed=0, rank=None, world_size=None):
        self.urls = expand_shard_urls(urls)
        self.transform = transform if transform is not None else ImageTransform(image_size)
        if rank is None or world_size is None:
            import torch.distributed as dist
            on = dist.is_available() and dist.is_initialized()
            rank = (dist.get_rank() if on else 0) if rank is None else rank
            world_size = (dist.get_world_size() if on else 1) if world_size is None \
                else world_size
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_samples is not None and num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if resampled and num_samples is None:
            raise ValueError("resampled shards need num_samples (--train-num-samples): the "
                             "stream is endless")
        self.rank, self.world_size = rank, world_size
        self.num_workers = max(int(num_workers), 1)
        self.batch_size = batch_size
        self.num_samples = num_samples
        self.shuffle_buffer = int(shuffle_buffer)
        self.shuffle_initial = shuffle_initial
        self.shuffle_shards, self.resampled, self.seed = shuffle_shards, resampled, seed
        readers = self.world_size * self.num_workers
        if not resampled and len(self.urls) < readers:
            raise ValueError(f"{len(self.urls)} shard(s) cannot feed {readers} readers "
                             f"({self.world_size} rank(s) x {self.num_workers} worker(s)): use "
                             f"fewer workers, more shards, or resampled shards")
        # the epoch lives in shared memory so persistent DataLoader workers see set_epoch
        self._epoch = multiprocessing.Value("i", 0, lock=False)

    # --- epoch length -----------------------------------------------------------------------
    @property
    def items_per_reader(self):
        """Items (batches, or samples without batch_size) each reader yields per epoch; None
        for one pass over the shards."""
        if self.num_samples is None:
            return None
        readers = self.world_size * self.num_workers
        if self.batch_size is None:
            return math.ceil(self.num_samples / readers)
        num_batches = math.ceil(self.num_samples / (self.batch_size * self.world_size))
        return math.ceil(num_batches / self.num_workers)

    def __len__(self):
        """Items this rank's DataLoader yields per epoch (needs num_samples)."""
        if self.num_samples is None:
            raise TypeError("the length of a WebDataset epoch is unknown without num_samples")
        return self.items_per_reader * self.num_workers

    def set_epoch(self, epoch):
        self._epoch.value = int(epoch)

    @property
    def epoch(self):
        return self._epoch.value

    # --- iteration --------------------------------------------------------------------------
    def _reader(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != self.num_workers:
            raise ValueError(f"WebImageTextDataset was built for num_workers="
                             f"{self.num_workers} but runs in a DataLoader with {workers}: "
                             f"pass the DataLoader's num_workers")
        return self.rank * workers + worker, self.world_size * workers

    def _shard_order(self, epoch, reader, readers):
        """Endless (resampled, or cycling for num_samples) or one-pass iterator of this
        reader's shards."""
        if self.resampled:
            rng = random.Random(f"{self.seed}-{epoch}-{reader}-resample")
            while True:
                yield rng.choice(self.urls)
        passes = itertools.count() if self.num_samples is not None else range(1)
        for p in passes:
            order = list(self.urls)
            if self.shuffle_shards:
                random.Random(f"{self.seed}-{epoch}-{p}-shards").shuffle(order)
            yield from order[reader::readers]

    def _raw_samples(self, epoch, reader, readers):
        """Shuffled stream of undecoded sample dicts for this reader."""
        wds = _webdataset()
        progress = _Progress()
        # the shards this reader may ever get (shuffled passes hand it different ones)
        fixed_share = not (self.resampled or self.shuffle_shards)
        candidates = set(self.urls[reader::readers] if fixed_share else self.urls)
        shards = ({"url": url} for url in
                  _stop_when_fruitless(self._shard_order(epoch, reader, readers), progress,
                                       candidates))
        samples = progress.count(wds.tarfile_samples(shards, handler=_warn_and_continue))
        if self.shuffle_buffer > 1:
            initial = self.shuffle_initial if self.shuffle_initial is not None \
                else min(100, self.shuffle_buffer)
            rng = random.Random(f"{self.seed}-{epoch}-{reader}-samples")
            samples = wds.shuffle(self.shuffle_buffer, initial, rng=rng)(samples)
        return iter(samples)

    def _items(self, state):
        reader, readers = self._reader()
        raw = self._raw_samples(state.epoch, reader, readers)
        for _ in range(state.samples):  # resume: skip what was taken, without decoding
            if next(raw, _END) is _END:
                return
        per_item = self.batch_size or 1
        quota = None if self.items_per_reader is None else self.items_per_reader * per_item
        while quota is None or state.samples < quota:
            items = []
            while len(items) < per_item and (quota is None or state.samples < quota):
                sample = next(raw, _END)
                if sample is _END:
                    break
                items.append(decode_sample(sample, self.transform))
                state.samples += 1
            if not items:
                return
            yield collate_image_text(items) if self.batch_size is not None else items[0]

    def __iter__(self):
        return _ReaderIterator(self)


class _Progress:
    """Counts the samples read from the tars (the shard iterator consults it)."""

    def __init__(self):
        self.samples = 0

    def count(self, samples):
        for sample in samples:
            self.samples += 1
            yield sample


def _stop_when_fruitless(shards, progress, candidates):
    """Pass shards through, but end once every candidate shard has been read since the last
    sample without giving one: a reader cycling over empty or broken shards would never end.
    (The next shard is only requested after the previous one's samples were counted.)"""
    fruitless, previous, count = set(), None, 0
    for url in shards:
        if previous is not None:
            if progress.samples == count:
                fruitless.add(previous)
            else:
                fruitless.clear()
        if candidates <= fruitless:
            log.warning("WebDataset: shards %s gave no samples; this reader stops",
                        sorted(candidates)[:3])
            return
        previous, count = url, progress.samples
        yield url


class _ReaderIterator:
    """One reader's pass over an epoch; Stateful for torchdata's StatefulDataLoader."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.epoch = dataset.epoch
        self.samples = 0
        self._items = None

    def state_dict(self):
        return {"epoch": self.epoch, "samples": self.samples}

    def load_state_dict(self, state):
        if self._items is not None:
            raise RuntimeError("load_state_dict must come before the first item is taken")
        self.epoch, self.samples = int(state["epoch"]), int(state["samples"])

    def __iter__(self):
        return self

    def __next__(self):
        if self._items is None:
            self._items = self.dataset._items(self)
        return next(self._items)
