"""Mixing text pairs into image-text batches (--text-pair-fraction, the paper's "+25% C4").

    n_image_text, n_text_pairs = split_batch_size(batch_size, 0.25)
    loader = MixedLoader(image_text_loader, text_pair_loader, n_text_pairs)
    for batch in loader:   # {"images", "texts", "texts_a", "texts_b", "skipped"}

The image-text loader (batch size n_image_text; drop_last=True keeps its last batch full
too) sets the epoch; every batch gets exactly n_text_pairs pairs, taken from the text-pair loader's batches in order (regrouped, so that
loader's own batch size does not matter) and cycling over it when it runs out. Both loaders
reshuffle on each pass as DataLoaders do; on every new text-pair pass `set_epoch(k)` is
called on its sampler or dataset when they have one (DistributedSampler).

Resume: state_dict() holds both loaders' state_dict() when they have one (torchdata's
StatefulDataLoader), the text-pair pass count and the pairs already fetched but not yet used;
with plain DataLoaders a resumed run restarts their passes. For an exact resume across
text-pair passes give that loader an epoch-seeded sampler (DistributedSampler, which data
parallel training needs anyway): each pass's order is then a function of the pass number,
which is saved and set again on load. A StatefulDataLoader shuffled by its own generator
resumes its current pass exactly, but torchdata 0.11 orders the passes after a resume
differently from an uninterrupted run.
"""
import math

import torch

__all__ = ["split_batch_size", "MixedLoader"]


def split_batch_size(batch_size, text_pair_fraction):
    """(n_image_text, n_text_pairs) of a batch: n_text_pairs = batch_size x fraction rounded
    half up, kept within [1, batch_size - 1] when 0 < fraction < 1 and batch_size >= 2 so
    both parts are present."""
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    fraction = float(text_pair_fraction)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"text_pair_fraction must be in [0, 1], got {text_pair_fraction!r}")
    batch_size = int(batch_size)
    # the 1e-9 keeps products like 10 x 0.15 (= 1.4999999999999998 in binary) rounding up
    n_pairs = math.floor(batch_size * fraction + 0.5 + 1e-9)
    if 0.0 < fraction < 1.0 and batch_size >= 2:
        n_pairs = min(max(n_pairs, 1), batch_size - 1)
    return batch_size - n_pairs, n_pairs


def _set_epoch(loader, epoch):
    for owner in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None),
                  getattr(loader, "dataset", None)):
        if owner is not None and callable(getattr(owner, "set_epoch", None)):
            owner.set_epoch(epoch)
            return


def _empty_images():
    return torch.empty((0, 3, 0, 0), dtype=torch.uint8)


class MixedLoader:
    """Zips an image-text loader (batches from collate_image_text) with a text-pair loader
    (batches from collate_text_pairs) into combined batch dicts; see the module docstring.

    Either loader may be None: without text pairs, texts_a / texts_b are empty; without
    image-text data (fraction 1, "C4 only") the text-pair loader's batches pass through with
    an empty images tensor and the text-pair loader sets the epoch.
    """

    def __init__(self, image_text_loader, text_pair_loader=None, text_pairs_per_batch=None):
        if image_text_loader is None and text_pair_loader is None:
            raise ValueError("MixedLoader needs at least one loader")
        if image_text_loader is not None and text_pair_loader is not None:
            if text_pairs_per_batch is None or int(text_pairs_per_batch) < 1:
                raise ValueError("text_pairs_per_batch must be >= 1 when mixing text pairs "
                                 f"into image-text batches, got {text_pairs_per_batch!r}")
        self.image_text_loader = image_text_loader
        self.text_pair_loader = text_pair_loader
        self.text_pairs_per_batch = None if text_pairs_per_batch is None \
            else int(text_pairs_per_batch)
        self.text_pass = 0  # passes started over the text-pair loader
        self._text_iter = None
        self._buffer_a, self._buffer_b = [], []

    def __len__(self):
        return len(self.image_text_loader if self.image_text_loader is not None
                   else self.text_pair_loader)

    def set_epoch(self, epoch):
        """Forward the epoch to the image-text loader's sampler or dataset (the text-pair
        loader's passes are counted here instead)."""
        if self.image_text_loader is not None:
            _set_epoch(self.image_text_loader, epoch)
        else:
            _set_epoch(self.text_pair_loader, epoch)

    def __iter__(self):
        if self.image_text_loader is None:
            for batch in self.text_pair_loader:
                yield {"images": _empty_images(), "texts": [], "texts_a": batch["texts_a"],
                       "texts_b": batch["texts_b"], "skipped": batch["skipped"]}
            return
        for batch in self.image_text_loader:
            out = {"images": batch["images"], "texts": batch["texts"], "texts_a": [],
                   "texts_b": [], "skipped": batch["skipped"],
                   "skipped_names": batch.get("skipped_names", [])}
            if self.text_pair_loader is not None:
                out["texts_a"], out["texts_b"], skipped = self._take_pairs()
                out["skipped"] += skipped
            yield out

    # --- text pairs -------------------------------------------------------------------------
    def _next_text_batch(self):
        if self._text_iter is None:
            self._text_iter = iter(self.text_pair_loader)
        batch = next(self._text_iter, None)
        if batch is not None:
            return batch, True
        # pass over: start the next one (reshuffled)
        self.text_pass += 1
        _set_epoch(self.text_pair_loader, self.text_pass)
        self._text_iter = iter(self.text_pair_loader)
        return next(self._text_iter, None), False

    def _take_pairs(self):
        n, skipped = self.text_pairs_per_batch, 0
        pairs_this_pass = None  # pairs gathered since the last pass boundary
        while len(self._buffer_a) < n:
            batch, same_pass = self._next_text_batch()
            if not same_pass:
                if pairs_this_pass == 0:
                    raise RuntimeError("the text-pair loader gave no usable pair in a whole "
                                       "pass (all skipped or empty)")
                pairs_this_pass = 0
            if batch is None:
                raise RuntimeError("the text-pair loader yields no batches")
            self._buffer_a.extend(batch["texts_a"])
            self._buffer_b.extend(batch["texts_b"])
            skipped += batch["skipped"]
            if pairs_this_pass is not None:
                pairs_this_pass += len(batch["texts_a"])
        texts_a, self._buffer_a = self._buffer_a[:n], self._buffer_a[n:]
        texts_b, self._buffer_b = self._buffer_b[:n], self._buffer_b[n:]
        return texts_a, texts_b, skipped

    # --- checkpointing ----------------------------------------------------------------------
    def state_dict(self):
        def loader_state(loader):
            fn = getattr(loader, "state_dict", None)
            return fn() if callable(fn) else None
        return {"image_text_loader": loader_state(self.image_text_loader),
                "text_pair_loader": loader_state(self.text_pair_loader),
                "text_pass": self.text_pass,
                "buffer_a": list(self._buffer_a), "buffer_b": list(self._buffer_b)}

    def load_state_dict(self, state):
        for loader, key in ((self.image_text_loader, "image_text_loader"),
                            (self.text_pair_loader, "text_pair_loader")):
            fn = getattr(loader, "load_state_dict", None)
            if state.get(key) is not None and callable(fn):
                fn(state[key])
        self.text_pass = int(state.get("text_pass", 0))
        if self.text_pair_loader is not None:
            _set_epoch(self.text_pair_loader, self.text_pass)
        self._buffer_a = list(state.get("buffer_a", []))
        self._buffer_b = list(state.get("buffer_b", []))
        self._text_iter = None
