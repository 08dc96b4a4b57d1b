"""Training data for `clippo train`: batches at a global sample position, over CSV, WebDataset
or built-in data, optionally mixed with text pairs.

Map-style data (CSV, built-in, local WebDataset shards, text pairs) is read in one global
order: epoch e is a permutation of the dataset drawn from numpy's generator seeded by
(seed, e), and the epochs are concatenated into one stream of samples (so a step may hold the
end of one epoch and the start of the next). An optimizer step takes
G = batch_size x accum_freq x world_size samples (OpenCLIP's effective batch): with text pairs
(--text-pair-fraction f) round(f G) pairs from their own stream (seed + 1) and the rest
image-text samples, each stream's next samples of the step dealt out in order to the W x k
slots (rank r's micro-batch j is slot j x W + r) as evenly as they go, so that every
micro-batch holds batch_size samples (the image-text extras fill the first slots, the pairs'
the last).

The data position is therefore one number per stream, the global samples taken: it does
not depend on the number of workers or processes. A checkpoint stores it; resuming with other
--workers continues exactly, and resuming on another number of processes that keeps G takes
the same samples per step (only the split over ranks changes). Every random choice made while
loading a sample (random-resized-crop) draws from a generator seeded by (seed, source, epoch,
sample index) (clippo.data.transforms.sample_rng), and the built-in data is a function of
(seed, index), so a resumed run loads the very same pixels.

Remote WebDataset shards (pipe:, http, s3) stream through WebImageTextDataset instead; their
position is the readers' state (torchdata's StatefulDataLoader), which resumes exactly with
the same number of processes and workers only.

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
IMAGE_TEXT, TEXT_PAIRS = 0, 1  # the sources of a sample reference


def shuffled_order(num_samples, seed, shuffle=True):
    """epoch -> the order of range(num_samples) in that epoch (numpy's generator seeded by
    [seed, epoch]; the identity when shuffle is False)."""
    cache = {}

    def order(epoch):
        if epoch not in cache:
            cache.clear()
            cache[epoch] = (np.random.default_rng([seed, epoch]).permutation(num_samples)
                            if shuffle else np.arange(num_samples))
        return cache[epoch]
    return order


class GlobalBatchSampler:
    """This rank's micro-batches of sample references (source, index, epoch) into a stream of
    global sample positions (see the module docstring).

    num_samples: the dataset's length; global_batch: this stream's samples per optimizer step
    over all ranks, dealt out to the world_size x accum_freq slots (the extras to the first
    slots, or to the last with extras_last); start: the global position of the first step (a
    multiple of global_batch in a resumed run). `order` (epoch -> an array of num_samples
    indices) replaces the seeded permutation, e.g. for sampling with replacement; any
    map-style dataset plugs in through its length.
    """

    def __init__(self, num_samples, global_batch, *, rank=0, world_size=1, accum_freq=1,
                 seed=0, start=0, shuffle=True, order=None, source=IMAGE_TEXT,
                 extras_last=False):
        if global_batch <= 0:
            raise ValueError(f"the batch must be positive, got {global_batch}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if num_samples <= 0:
            raise ValueError("the dataset holds no samples")
        self.num_samples, self.global_batch = int(num_samples), int(global_batch)
        self.rank, self.world_size, self.accum_freq = rank, world_size, int(accum_freq)
        self.order = order or shuffled_order(self.num_samples, int(seed), shuffle)
        self.source = source
        self.start = int(start)
        self.extras_last = extras_last

    def slot(self, m):
        """(offset in the step, size) of slot m = j x world_size + rank."""
        slots = self.world_size * self.accum_freq
        base, extra = divmod(self.global_batch, slots)
        first = slots - extra if self.extras_last else 0  # the slots that take one more
        offset = m * base + min(max(m - first, 0), extra)
        return offset, base + (first <= m < first + extra)

    def refs(self, position, count):
        """The references of global positions [position, position + count)."""
        out = []
        while len(out) < count:
            epoch, offset = divmod(position + len(out), self.num_samples)
            take = self.order(epoch)[offset:offset + count - len(out)]
            out.extend((self.source, int(i), epoch) for i in take)
        return out

    def micro_batch(self, step_position, j):
        """Micro-batch j of this rank in the step that starts at global `step_position`."""
        offset, size = self.slot(j * self.world_size + self.rank)
        return self.refs(step_position + offset, size)

    def __iter__(self):
        position = self.start
        while True:
            for j in range(self.accum_freq):
                yield self.micro_batch(position, j)
            position += self.global_batch


class _ZipSampler:
    """Micro-batches of several samplers joined (image-text references, then text pairs)."""

    def __init__(self, samplers):
        self.samplers = samplers

    def __iter__(self):
        for parts in zip(*self.samplers):
            yield [ref for part in parts for ref in part]


class SampleDataset:
    """Map-style dataset of sample references: (source, index, epoch) -> (source, item), the
    item loaded inside sample_rng(seed, source, epoch, index)."""

    def __init__(self, sources, seed):
        self.sources, self.seed = sources, int(seed)

    def __getitem__(self, ref):
        from clippo.data.transforms import sample_rng
        source, index, epoch = ref
        with sample_rng(self.seed, source, epoch, index):
            return source, self.sources[source][index]


def collate_samples(items):
    """(source, item) pairs -> one batch dict (images, texts, texts_a, texts_b, skipped)."""
    from clippo.data.collate import collate_image_text, collate_text_pairs
    images = collate_image_text([x for s, x in items if s == IMAGE_TEXT])
    pairs = collate_text_pairs([x for s, x in items if s == TEXT_PAIRS])
    return {"images": images["images"], "texts": images["texts"],
            "texts_a": pairs["texts_a"], "texts_b": pairs["texts_b"],
            "skipped": images["skipped"] + pairs["skipped"],
            "skipped_names": images["skipped_names"]}


class ShardedBatchSampler:
    """Endless per-rank batches of indices into a dataset of `num_samples` (the text pairs of
    streamed WebDataset training).

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
    _check_mixture(args, kind)
    if kind == "csv" and not Path(args.train_data).is_file():
        raise FileNotFoundError(f"--train-data {args.train_data}: no such file")
    if args.text_pairs and args.text_pairs != "builtin" and not Path(args.text_pairs).is_file():
        raise FileNotFoundError(f"--text-pairs {args.text_pairs}: no such file")
    return kind


def _check_mixture(args, kind):
    """'::'-joined sources, --train-data-upsampling-factors and --dataset-resampled are for
    WebDataset shards (clippo.data.mixture); factors need --dataset-resampled (as OpenCLIP)."""
    from clippo.data.mixture import SEPARATOR, parse_factors, split_sources
    factors = getattr(args, "train_data_upsampling_factors", None)
    resampled = getattr(args, "dataset_resampled", False)
    if kind != "webdataset":
        for flag, given in (("'::'-joined sources", SEPARATOR in str(args.train_data)),
                            ("--dataset-resampled", resampled),
                            ("--train-data-upsampling-factors", factors)):
            if given:
                raise ValueError(f"{flag}: for WebDataset shards only (--train-data "
                                 f"{args.train_data} is {kind} data)")
        return
    if factors is not None:
        if not resampled:
            raise ValueError("--train-data-upsampling-factors needs --dataset-resampled "
                             "(shards drawn with replacement, as OpenCLIP)")
        parse_factors(factors, len(split_sources(args.train_data)))


def _pin_memory(args):
    """Page-locked batches when training on CUDA: the copy to the device overlaps the step."""
    import torch
    return torch.cuda.is_available() and (args.device or "cuda").startswith("cuda")


def _stateful_loader(dataset, batch_sampler, collate_fn, workers, seed, pin_memory=False):
    import torch
    from torchdata.stateful_dataloader import StatefulDataLoader

    from clippo.train.stop import ignore_stop_signals

    generator = torch.Generator().manual_seed(seed)  # worker seeds: independent of global RNG
    return StatefulDataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collate_fn,
                              num_workers=workers, pin_memory=pin_memory, generator=generator,
                              persistent_workers=False, worker_init_fn=ignore_stop_signals,
                              **({"prefetch_factor": 2} if workers else {}))


class TrainData:
    """The micro-batches of one rank at a global sample position: iterate for batch dicts,
    accum_freq of them per optimizer step. state_dict() after whole steps; load_state_dict()
    before iterating.

    samples_per_epoch: the image-text dataset's length; steps_per_epoch: optimizer steps per
    epoch (samples_per_epoch / global batch, a float).
    """

    kind = "global"

    def __init__(self, samplers, make_loader, *, accum_freq, describe, image_batch,
                 pair_batch=0):
        # image_batch, pair_batch: the global samples of each kind per step
        self.samplers = samplers  # image-text first, then text pairs when mixed in
        self._make_loader = make_loader
        self.accum_freq = accum_freq
        self.describe = describe
        self.image_batch, self.pair_batch = image_batch, pair_batch
        self.samples_per_epoch = samplers[0].num_samples
        self.num_samples = self.samples_per_epoch  # image-text samples per epoch
        self.images_per_step = samplers[0].global_batch  # over all ranks
        self.global_batch = sum(s.global_batch for s in samplers)
        self.steps_per_epoch = self.samples_per_epoch / samplers[0].global_batch
        self.micro_batches = 0  # taken since the start position

    def __iter__(self):
        sampler = self.samplers[0] if len(self.samplers) == 1 else _ZipSampler(self.samplers)
        for batch in self._make_loader(sampler):
            self.micro_batches += 1
            yield batch

    def positions(self):
        """The global position of every stream after the micro-batches taken (whole steps)."""
        steps = self.micro_batches // self.accum_freq
        return [s.start + steps * s.global_batch for s in self.samplers]

    def state_dict(self):
        return {"kind": self.kind, "positions": self.positions(),
                "global_batches": [s.global_batch for s in self.samplers],
                "num_samples": [s.num_samples for s in self.samplers]}

    def load_state_dict(self, state, strict=True):
        """Continue at the state's positions. strict=False (--resume-allow-changes): the
        datasets and the global batch may have changed; each stream goes on from the
        position of the same stream in the checkpoint (a new one from 0)."""
        if state.get("kind") != self.kind:
            raise ValueError("the checkpoint's data position is of another kind (streamed "
                             "WebDataset shards, or an older clippo): resume with the data "
                             "and version it was written with")
        if not strict:
            positions = list(state["positions"])
            for i, sampler in enumerate(self.samplers):
                sampler.start = int(positions[i]) if i < len(positions) else 0
            self.micro_batches = 0
            return
        if list(state["num_samples"]) != [s.num_samples for s in self.samplers]:
            raise ValueError(f"the training data changed: the checkpoint's datasets held "
                             f"{state['num_samples']} samples, now "
                             f"{[s.num_samples for s in self.samplers]}")
        if list(state["global_batches"]) != [s.global_batch for s in self.samplers]:
            raise ValueError(f"the global batch changed: the checkpoint took "
                             f"{state['global_batches']} samples per step, this run "
                             f"{[s.global_batch for s in self.samplers]}")
        for sampler, position in zip(self.samplers, state["positions"]):
            sampler.start = int(position)
        self.micro_batches = 0

    def epoch(self):
        """The epoch of the last image-text sample taken (0 before any)."""
        position = self.positions()[0]
        return max(position - 1, 0) // self.samples_per_epoch


class StreamTrainData:
    """The micro-batches of one rank from streamed WebDataset shards (positions held by the
    readers: resume with the same number of processes and workers)."""

    kind = "stream"

    def __init__(self, loader, *, accum_freq, batches_per_epoch, describe, image_batch,
                 pair_batch=0, workers=0, world_size=1):
        self.loader = loader
        self.accum_freq = accum_freq
        self.batches_per_epoch = batches_per_epoch
        self.steps_per_epoch = batches_per_epoch / accum_freq
        self.describe = describe
        self.image_batch, self.pair_batch = image_batch, pair_batch
        self.global_batch = (image_batch + pair_batch) * accum_freq * world_size
        self.images_per_step = image_batch * accum_freq * world_size
        self.samples_per_epoch = None
        self.num_samples = None  # set by the caller when known (--train-num-samples)
        self.workers, self.world_size = workers, world_size
        self.micro_batches = 0  # since the start of the run

    def __iter__(self):
        with warnings.catch_warnings():  # torchdata calls a deprecated torch API at start-up
            warnings.filterwarnings("ignore", message="'set_vital' is deprecated")
            for batch in self.loader:
                self.micro_batches += 1
                yield batch

    def state_dict(self):
        return {"kind": self.kind, "loader": self.loader.state_dict(),
                "micro_batches": self.micro_batches, "workers": self.workers,
                "world_size": self.world_size}

    def load_state_dict(self, state, strict=True):
        if state.get("kind") != self.kind:
            raise ValueError("the checkpoint's data position is of another kind: resume with "
                             "the data it was written with")
        if (state["workers"], state["world_size"]) != (self.workers, self.world_size):
            raise ValueError(
                f"streamed (remote) WebDataset shards resume with the same --workers and number "
                f"of processes only: the checkpoint had {state['workers']} workers x "
                f"{state['world_size']} processes, this run {self.workers} x {self.world_size}")
        self.loader.load_state_dict(state["loader"])
        self.micro_batches = int(state["micro_batches"])

    def epoch(self):
        return max(self.micro_batches - 1, 0) // self.batches_per_epoch


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


def _streamed(args, kind):
    """Remote shards, and resampled shards (drawn with replacement: OpenCLIP's
    --dataset-resampled and mixtures), stream; local shards read once an epoch are indexed."""
    from clippo.data.wds import all_local
    return kind == "webdataset" and (not all_local(args.train_data)
                                     or getattr(args, "dataset_resampled", False))


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
    if kind == "webdataset":
        from clippo.data.wds import IndexedShards
        return IndexedShards(args.train_data, image_size=image_size,
                             transform=_transform(args, image_size))
    raise ValueError(f"unknown dataset type {kind!r}")


def _text_pair_dataset(args):
    if args.text_pairs == "builtin":
        from clippo.data.builtin import BuiltinTextPairs
        return BuiltinTextPairs(num_samples=args.train_num_samples or DEFAULT_BUILTIN_SAMPLES,
                                seed=args.seed)
    from clippo.data.text_pairs import TextPairDataset
    return TextPairDataset(args.text_pairs)


def _batch_split(args, batch_size=None):
    """(image-text, text-pair) samples of a batch (default: per rank and micro-batch)."""
    from clippo.data.mix import split_batch_size
    batch_size = args.batch_size if batch_size is None else batch_size
    if bool(args.text_pairs) and args.text_pair_fraction > 0:
        return split_batch_size(batch_size, args.text_pair_fraction)
    return batch_size, 0


def get_data(args, image_size, rank=0, world_size=1):
    """TrainData (or StreamTrainData) for this rank, from the flags (see clippo.train.params)."""
    import torch

    kind = check_sources(args)
    accum = getattr(args, "accum_freq", 1)
    if _streamed(args, kind):
        image_batch, pair_batch = _batch_split(args)
        return _stream_data(args, image_size, image_batch, pair_batch, rank, world_size)
    # the split of the global batch, so that it does not depend on the number of processes
    image_batch, pair_batch = _batch_split(args, args.batch_size * accum * world_size)
    if not image_batch:
        raise ValueError("--text-pair-fraction 1 leaves no image-text samples in a batch")

    dataset = _image_text_dataset(args, kind, image_size)
    if len(dataset) == 0:
        raise ValueError(f"--train-data {args.train_data} holds no (readable) samples")
    common = dict(rank=rank, world_size=world_size, accum_freq=accum)
    samplers, sources = [], {}
    samplers.append(GlobalBatchSampler(len(dataset), image_batch, seed=args.seed,
                                       source=IMAGE_TEXT, **common))
    sources[IMAGE_TEXT] = dataset
    describe = {"builtin": f"built-in scenes ({len(dataset):,} samples)",
                "csv": f"CSV {args.train_data} ({len(dataset):,} samples)",
                "webdataset": f"WebDataset {args.train_data} ({len(dataset):,} samples "
                              f"indexed)"}[kind]
    if kind == "webdataset" and args.train_num_samples and \
            args.train_num_samples != len(dataset):
        describe += (f" (--train-num-samples {args.train_num_samples:,} does not apply: the "
                     f"epoch is the samples indexed)")
    if pair_batch:
        pairs = _text_pair_dataset(args)
        samplers.append(GlobalBatchSampler(len(pairs), pair_batch, seed=args.seed + 1,
                                           source=TEXT_PAIRS, extras_last=True, **common))
        sources[TEXT_PAIRS] = pairs
        describe += (f" + text pairs {args.text_pairs} ({pair_batch} of "
                     f"{image_batch + pair_batch} per step)")
    samples = SampleDataset(sources, args.seed)
    workers, pin = args.workers, _pin_memory(args)
    from clippo.train.stop import ignore_stop_signals

    def make_loader(batch_sampler):
        # the workers' base seed from a generator of its own: the global RNG stays untouched
        # (the samples' random choices come from sample_rng, not from worker seeds)
        return torch.utils.data.DataLoader(
            samples, batch_sampler=batch_sampler, collate_fn=collate_samples,
            num_workers=workers, pin_memory=pin, worker_init_fn=ignore_stop_signals,
            generator=torch.Generator().manual_seed(args.seed),
            **({"prefetch_factor": 2} if workers else {}))
    return TrainData(samplers, make_loader, accum_freq=accum, describe=describe,
                     image_batch=image_batch, pair_batch=pair_batch)


def _stream_data(args, image_size, image_batch, pair_batch, rank, world_size):
    import torch
    from torchdata.stateful_dataloader import StatefulDataLoader

    from clippo.data.collate import collate_text_pairs
    from clippo.data.mix import MixedLoader
    from clippo.data.wds import WebImageTextDataset
    from clippo.train.stop import ignore_stop_signals
    from clippo.data.mixture import weighted_shards
    if not args.train_num_samples:
        raise ValueError("remote or resampled WebDataset training data needs "
                         "--train-num-samples (the epoch length, so that every rank takes the "
                         "same number of steps)")
    urls, weights = weighted_shards(args.train_data,
                                    getattr(args, "train_data_upsampling_factors", None))
    dataset = WebImageTextDataset(urls, image_size=image_size, weights=weights,
                                  resampled=getattr(args, "dataset_resampled", False),
                                  transform=_transform(args, image_size),
                                  num_samples=args.train_num_samples, batch_size=image_batch,
                                  num_workers=args.workers, seed=args.seed, rank=rank,
                                  world_size=world_size)
    loader = EpochLoop(StatefulDataLoader(dataset, batch_size=None, num_workers=args.workers,
                                          pin_memory=_pin_memory(args),
                                          worker_init_fn=ignore_stop_signals,
                                          generator=torch.Generator().manual_seed(args.seed)),
                       dataset)
    describe = f"WebDataset {args.train_data} ({args.train_num_samples:,} samples/epoch)"
    if pair_batch:
        pairs = _text_pair_dataset(args)
        pair_sampler = ShardedBatchSampler(len(pairs), pair_batch, rank, world_size,
                                           seed=args.seed + 1)
        pair_loader = _stateful_loader(pairs, pair_sampler, collate_text_pairs, args.workers,
                                       seed=(args.seed + 1) * 1_000_003 + rank)
        loader = MixedLoader(loader, pair_loader, pair_batch)
        describe += f" + text pairs {args.text_pairs} ({pair_batch} of {args.batch_size})"
    data = StreamTrainData(loader, accum_freq=getattr(args, "accum_freq", 1),
                           batches_per_epoch=len(dataset), describe=describe,
                           image_batch=image_batch, pair_batch=pair_batch,
                           workers=args.workers, world_size=world_size)
    data.num_samples = args.train_num_samples
    return data


def steps_for_epochs(epochs, steps_per_epoch):
    """Optimizer steps for `epochs` passes (steps_per_epoch may be fractional)."""
    if not steps_per_epoch:
        raise ValueError("--epochs needs the number of samples: pass --train-num-samples, or "
                         "use --steps")
    return max(1, math.ceil(round(epochs * steps_per_epoch, 9)))
