"""Training data for `clippo train`: resumable loaders over CSV, WebDataset or built-in data,
optionally mixed with text pairs.

Map-style datasets (CSV, built-in, text pairs) are read through `ShardedBatchSampler`: an
endless stream of batches over epochs, epoch e a permutation seeded by (seed, e), of which
rank r takes every world_size-th index (as DistributedSampler with drop_last). The stream's
position is the sampler's state, and torchdata's StatefulDataLoader snapshots it together
with the workers' state, so a checkpoint's data position resumes exactly. Epochs therefore
run into each other: a batch may hold the end of one epoch and the start of the next.

Workers only decode and resize images; captions stay strings until the training step renders
them on the device.
"""
import math
import warnings

# torchdata 0.11's StatefulDataLoader calls a torch API that newer torch deprecates; the
# warning is about torchdata's internals, not anything a user can act on
warnings.filterwarnings("ignore", message="'set_vital' is deprecated")
from pathlib import Path

import numpy as np

DEFAULT_BUILTIN_SAMPLES = 10_000


class ShardedBatchSampler:
    """Endless per-rank batches of indices into a dataset of `num_samples`.

    Epoch e: a permutation of range(num_samples) drawn from numpy's generator seeded with
    [seed, e] (the identity when shuffle is False); rank r keeps positions r, r + W, r + 2W, ...
    of its first W * (num_samples // W). Batch k of a rank is items [k * B, (k + 1) * B) of the
    concatenation of its epochs. state_dict() holds the number of batches handed out.
    """

    def __init__(self, num_samples, batch_size, rank=0, world_size=1, seed=0, shuffle=True):
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.num_samples, self.batch_size = int(num_samples), int(batch_size)
        self.rank, self.world_size = rank, world_size
        self.seed, self.shuffle = int(seed), shuffle
        self.per_rank = self.num_samples // world_size
        if self.per_rank == 0:
            raise ValueError(f"a dataset of {num_samples} samples cannot be split over "
                             f"{world_size} processes")
        self.position = 0
        self._shard = (None, None)  # (epoch, indices) cache

    def shard(self, epoch):
        """This rank's indices for `epoch` (int64 numpy array of per_rank)."""
        if self._shard[0] != epoch:
            if self.shuffle:
                order = np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)
            else:
                order = np.arange(self.num_samples)
            used = self.per_rank * self.world_size
            self._shard = (epoch, order[self.rank:used:self.world_size])
        return self._shard[1]

    def batch(self, k):
        """The indices of batch k (a pure function of k and the settings)."""
        start, out = k * self.batch_size, []
        while len(out) < self.batch_size:
            epoch, offset = divmod(start + len(out), self.per_rank)
            out.extend(self.shard(epoch)[offset:offset + self.batch_size - len(out)].tolist())
        return out

    def __iter__(self):
        while True:
            k = self.position
            self.position = k + 1
            yield self.batch(k)

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = int(state["position"])


def dataset_type(train_data, requested="auto"):
    """The dataset type for --train-data (auto: by name)."""
    if requested != "auto":
        return requested
    text = str(train_data)
    if text == "builtin":
        return "builtin"
    lower = text.lower()
    if lower.endswith((".csv", ".tsv")):
        return "csv"
    if ".tar" in lower or "{" in text or "::" in text or lower.startswith(("pipe:", "s3:",
                                                                            "gs:", "http")):
        return "webdataset"
    path = Path(text)
    if path.is_dir() and any(path.glob("*.tar")):
        return "webdataset"
    raise ValueError(f"cannot tell the type of --train-data {text!r}: name a .csv/.tsv file, "
                     f".tar shards or 'builtin', or pass --dataset-type")


def check_sources(args):
    """The dataset type; FileNotFoundError for a CSV or text-pair file that is not there."""
    kind = dataset_type(args.train_data, args.dataset_type)
    if kind == "csv" and not Path(args.train_data).is_file():
        raise FileNotFoundError(f"--train-data {args.train_data}: no such file")
    if args.text_pairs and args.text_pairs != "builtin" and not Path(args.text_pairs).is_file():
        raise FileNotFoundError(f"--text-pairs {args.text_pairs}: no such file")
    return kind


def _pin_memory(args):
    """Page-locked batches when training on CUDA: the copy to the device overlaps the step."""
    import torch
    return torch.cuda.is_available() and (args.device or "cuda").startswith("cuda")


def _loader(dataset, batch_sampler, collate_fn, workers, seed, pin_memory=False):
    import torch
    from torchdata.stateful_dataloader import StatefulDataLoader

    from clippo.train.stop import ignore_stop_signals

    generator = torch.Generator().manual_seed(seed)  # worker seeds: independent of global RNG
    return StatefulDataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collate_fn,
                              num_workers=workers, pin_memory=pin_memory, generator=generator,
                              persistent_workers=False, worker_init_fn=ignore_stop_signals,
                              **({"prefetch_factor": 2} if workers else {}))


class TrainData:
    """The training batches of one rank: iterate for batch dicts; state_dict() for resuming.

    steps_per_epoch: batches per epoch of the image-text data (None when unknown).
    num_samples: image-text samples per epoch (None when unknown).
    """

    def __init__(self, loader, *, steps_per_epoch, describe, image_batch, pair_batch=0,
                 num_samples=None):
        self.loader = loader
        self.num_samples = num_samples  # image-text samples per epoch (None when unknown)
        self.steps_per_epoch = steps_per_epoch
        self.describe = describe
        self.image_batch, self.pair_batch = image_batch, pair_batch

    def __iter__(self):
        with warnings.catch_warnings():  # torchdata calls a deprecated torch API at start-up
            warnings.filterwarnings("ignore", message="'set_vital' is deprecated")
            return iter(self.loader)

    def state_dict(self):
        return self.loader.state_dict()

    def load_state_dict(self, state):
        self.loader.load_state_dict(state)

    def epoch(self, step):
        """The (whole) epoch that batch number `step` belongs to, or None when unknown."""
        if not self.steps_per_epoch:
            return None
        return step // self.steps_per_epoch


class EpochLoop:
    """An endless stream over a loader whose epochs end (WebDataset): at the end of one, the
    dataset's epoch is advanced (reshuffling its shards) and the loader iterated again. The
    epoch number is part of the state."""

    def __init__(self, loader, dataset):
        self.loader, self.dataset = loader, dataset
        self.epoch = 0

    def __iter__(self):
        while True:
            self.dataset.set_epoch(self.epoch)
            empty = True
            for batch in self.loader:
                empty = False
                yield batch
            if empty:
                raise RuntimeError("the training data gave no batch in a whole epoch")
            self.epoch += 1

    def state_dict(self):
        return {"epoch": self.epoch, "loader": self.loader.state_dict()}

    def load_state_dict(self, state):
        self.epoch = int(state["epoch"])
        self.dataset.set_epoch(self.epoch)
        self.loader.load_state_dict(state["loader"])


def _transform(args, image_size):
    from clippo.data.transforms import ImageTransform
    return ImageTransform(image_size,
                          random_resized_crop=getattr(args, "random_resized_crop", False))


def _image_text_dataset(args, kind, image_size):
    if kind == "builtin":
        from clippo.data.builtin import BuiltinImageText
        n = args.train_num_samples or DEFAULT_BUILTIN_SAMPLES
        return BuiltinImageText(split="train", num_samples=n, image_size=image_size,
                                seed=args.seed,
                                languages=getattr(args, "builtin_languages", None))
    if kind == "csv":
        from clippo.data.csv_dataset import CsvDataset
        return CsvDataset(args.train_data, image_size=image_size, sep=args.csv_separator,
                          img_key=args.csv_img_key, caption_key=args.csv_caption_key,
                          transform=_transform(args, image_size))
    raise ValueError(f"unknown dataset type {kind!r}")


def _text_pair_dataset(args):
    if args.text_pairs == "builtin":
        from clippo.data.builtin import BuiltinTextPairs
        return BuiltinTextPairs(num_samples=args.train_num_samples or DEFAULT_BUILTIN_SAMPLES,
                                seed=args.seed)
    from clippo.data.text_pairs import TextPairDataset
    return TextPairDataset(args.text_pairs)


def _webdataset_loader(args, image_size, batch_size, rank, world_size):
    import torch
    from torchdata.stateful_dataloader import StatefulDataLoader

    from clippo.data.wds import WebImageTextDataset
    if not args.train_num_samples:
        raise ValueError("WebDataset training data needs --train-num-samples (the epoch "
                         "length, so that every rank takes the same number of steps)")
    dataset = WebImageTextDataset(args.train_data, image_size=image_size,
                                  transform=_transform(args, image_size),
                                  num_samples=args.train_num_samples, batch_size=batch_size,
                                  num_workers=args.workers, seed=args.seed, rank=rank,
                                  world_size=world_size)
    from clippo.train.stop import ignore_stop_signals
    loader = StatefulDataLoader(dataset, batch_size=None, num_workers=args.workers,
                                pin_memory=_pin_memory(args), worker_init_fn=ignore_stop_signals,
                                generator=torch.Generator().manual_seed(args.seed))
    return EpochLoop(loader, dataset), len(dataset)


def get_data(args, image_size, rank=0, world_size=1):
    """TrainData for this rank, from the flags (see clippo.train.params)."""
    from clippo.data.collate import collate_image_text, collate_text_pairs
    from clippo.data.mix import MixedLoader, split_batch_size

    kind = check_sources(args)
    with_pairs = bool(args.text_pairs) and args.text_pair_fraction > 0
    if with_pairs:
        image_batch, pair_batch = split_batch_size(args.batch_size, args.text_pair_fraction)
    else:
        image_batch, pair_batch = args.batch_size, 0

    if kind == "webdataset":
        image_loader, steps_per_epoch = _webdataset_loader(args, image_size, image_batch, rank,
                                                           world_size)
        describe = f"WebDataset {args.train_data} ({args.train_num_samples:,} samples/epoch)"
        num_samples = args.train_num_samples
    else:
        dataset = _image_text_dataset(args, kind, image_size)
        if len(dataset) == 0:
            raise ValueError(f"--train-data {args.train_data} holds no samples")
        sampler = ShardedBatchSampler(len(dataset), image_batch, rank, world_size, args.seed)
        image_loader = _loader(dataset, sampler, collate_image_text, args.workers,
                               seed=args.seed * 1_000_003 + rank, pin_memory=_pin_memory(args))
        steps_per_epoch = max(1, sampler.per_rank // image_batch)
        num_samples = len(dataset)
        describe = (f"built-in scenes ({len(dataset):,} samples)" if kind == "builtin" else
                    f"CSV {args.train_data} ({len(dataset):,} samples)")

    if not with_pairs:
        return TrainData(image_loader, steps_per_epoch=steps_per_epoch, describe=describe,
                         image_batch=image_batch, num_samples=num_samples)

    pairs = _text_pair_dataset(args)
    pair_sampler = ShardedBatchSampler(len(pairs), pair_batch, rank, world_size,
                                       seed=args.seed + 1)
    pair_loader = _loader(pairs, pair_sampler, collate_text_pairs, args.workers,
                          seed=(args.seed + 1) * 1_000_003 + rank)
    describe += f" + text pairs {args.text_pairs} ({pair_batch} of {args.batch_size} per batch)"
    return TrainData(MixedLoader(image_loader, pair_loader, pair_batch),
                     steps_per_epoch=steps_per_epoch, describe=describe,
                     image_batch=image_batch, pair_batch=pair_batch, num_samples=num_samples)


def steps_for_epochs(epochs, steps_per_epoch):
    if not steps_per_epoch:
        raise ValueError("--epochs needs the number of samples: pass --train-num-samples, or "
                         "use --steps")
    return max(1, math.ceil(epochs * steps_per_epoch))
