"""The text-pair mixer: the asked fraction in every batch, cycling and reshuffling the text
pairs, skipped samples counted, and exact resume through StatefulDataLoader."""
import math

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader

from clippo.data import (MixedLoader, TextPairDataset, collate_image_text, collate_text_pairs,
                         split_batch_size)


class TinyImageText(Dataset):
    """Item i: a 2x2 image filled with i and the caption 'cap i'; None at `skip` indices."""

    def __init__(self, n, skip=()):
        self.n, self.skip = n, set(skip)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i in self.skip:
            return None
        return torch.full((3, 2, 2), i, dtype=torch.uint8), f"cap {i}"


class NonePairs(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return None


@pytest.fixture
def pairs_file(tmp_path):
    p = tmp_path / "pairs.txt"
    p.write_text("".join(f"s{i}a\ns{i}b\n\n" for i in range(7)))  # 7 pairs (s_i a, s_i b)
    return p


@pytest.mark.parametrize("batch, fraction, want", [
    (8, 0.25, (6, 2)), (10, 0.25, (7, 3)), (10, 0.15, (8, 2)), (4, 0.0, (4, 0)),
    (4, 1.0, (0, 4)), (2, 0.01, (1, 1)), (2, 0.99, (1, 1)), (100, 0.333, (67, 33)),
    (1, 0.5, (0, 1)), (1, 0.49, (1, 0)), (10240, 0.25, (7680, 2560)),
])
def test_split_batch_size_hand_cases(batch, fraction, want):
    assert split_batch_size(batch, fraction) == want


def test_split_batch_size_rounds_half_up_and_keeps_both_parts():
    for batch in range(2, 65):
        for k in range(1, 20):
            fraction = k / 20
            n_it, n_tp = split_batch_size(batch, fraction)
            assert n_it + n_tp == batch and n_it >= 1 and n_tp >= 1
            exact = batch * fraction
            if 1 <= math.floor(exact + 0.5) <= batch - 1:
                # round half up, computed from exact fractions k * batch / 20
                assert n_tp == (2 * k * batch + 20) // 40


@pytest.mark.parametrize("batch, fraction", [(0, 0.5), (-1, 0.5), (2.5, 0.5), (True, 0.5),
                                             (8, -0.1), (8, 1.5), (8, float("nan"))])
def test_split_batch_size_rejects_bad_values(batch, fraction):
    with pytest.raises(ValueError):
        split_batch_size(batch, fraction)


def test_every_batch_has_the_asked_fraction_and_pairs_cycle(pairs_file):
    n_it, n_tp = split_batch_size(8, 0.25)
    images = DataLoader(TinyImageText(60), batch_size=n_it, shuffle=True,
                        collate_fn=collate_image_text,
                        generator=torch.Generator().manual_seed(0))
    # a text-pair batch size unrelated to n_tp: the mixer regroups the pairs
    pairs = DataLoader(TextPairDataset(pairs_file), batch_size=3, shuffle=True,
                       collate_fn=collate_text_pairs, generator=torch.Generator().manual_seed(1))
    mixed = MixedLoader(images, pairs, n_tp)
    assert len(mixed) == 10
    batches = list(mixed)
    assert len(batches) == 10
    for b in batches:
        assert set(b) == {"images", "texts", "texts_a", "texts_b", "skipped",
                          "skipped_names"}
        assert b["images"].shape[0] == len(b["texts"]) == 6 and b["skipped"] == 0
        assert len(b["texts_a"]) == len(b["texts_b"]) == 2
        assert len(b["texts_a"]) / (len(b["texts"]) + len(b["texts_a"])) == 0.25
        assert all(a[:-1] == t[:-1] and a.endswith("a") and t.endswith("b")
                   for a, t in zip(b["texts_a"], b["texts_b"]))
    # the 20 pairs used are passes over the 7 pairs in order: each pass a new permutation
    used = [a for b in batches for a in b["texts_a"]]
    passes = [used[0:7], used[7:14]]
    assert all(sorted(p) == [f"s{i}a" for i in range(7)] for p in passes)
    assert passes[0] != passes[1]
    assert mixed.text_pass == 2
    # the image side covers its dataset once per epoch
    caps = sorted(int(t.split()[1]) for b in batches for t in b["texts"])
    assert caps == list(range(60))


def test_skipped_samples_are_counted(pairs_file):
    images = DataLoader(TinyImageText(12, skip={1, 5, 6}), batch_size=4,
                        collate_fn=collate_image_text)
    pairs = DataLoader(TextPairDataset(pairs_file), batch_size=2, collate_fn=collate_text_pairs)
    batches = list(MixedLoader(images, pairs, 2))
    assert [b["skipped"] for b in batches] == [1, 2, 0]
    assert [len(b["texts"]) for b in batches] == [3, 2, 4]
    assert all(len(b["texts_a"]) == 2 for b in batches)
    with pytest.raises(RuntimeError, match="no usable pair"):
        list(MixedLoader(images, DataLoader(NonePairs(), batch_size=2,
                                            collate_fn=collate_text_pairs), 2))


def test_one_sided_loaders(pairs_file):
    images = DataLoader(TinyImageText(5), batch_size=2, collate_fn=collate_image_text)
    only_images = list(MixedLoader(images))
    assert [len(b["texts"]) for b in only_images] == [2, 2, 1]
    assert all(b["texts_a"] == [] == b["texts_b"] for b in only_images)
    pairs = DataLoader(TextPairDataset(pairs_file), batch_size=4, collate_fn=collate_text_pairs)
    only_pairs = list(MixedLoader(None, pairs))
    assert [len(b["texts_a"]) for b in only_pairs] == [4, 3]
    assert all(b["images"].shape[0] == 0 and b["texts"] == [] for b in only_pairs)
    with pytest.raises(ValueError):
        MixedLoader(None, None)
    with pytest.raises(ValueError):
        MixedLoader(images, pairs)  # mixing needs the number of pairs per batch


def test_text_pair_sampler_gets_each_pass_epoch(pairs_file):
    ds = TextPairDataset(pairs_file)
    sampler = DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=0)
    pairs = DataLoader(ds, batch_size=7, sampler=sampler, collate_fn=collate_text_pairs)
    images = DataLoader(TinyImageText(12), batch_size=4, collate_fn=collate_image_text)
    batches = list(MixedLoader(images, pairs, 5))  # 15 pairs: passes 0, 1 and 2
    assert sampler.epoch == 2
    used = [a for b in batches for a in b["texts_a"]]
    expected = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        expected += [ds[i][0] for i in sampler]
    assert used == expected[:15]


def test_stateful_resume_continues_exactly(pairs_file):
    def build():
        images = StatefulDataLoader(TinyImageText(40, skip={3, 17}), batch_size=5,
                                    shuffle=True, collate_fn=collate_image_text,
                                    generator=torch.Generator().manual_seed(0))
        # an epoch-seeded sampler: each text-pair pass's order is a function of the pass
        # number, which the mixer saves and sets again on resume
        text_pairs = TextPairDataset(pairs_file)
        sampler = DistributedSampler(text_pairs, num_replicas=1, rank=0, shuffle=True, seed=1)
        pairs = StatefulDataLoader(text_pairs, batch_size=2, sampler=sampler,
                                   collate_fn=collate_text_pairs)
        return MixedLoader(images, pairs, 3)

    def key(b):
        return (b["images"].flatten().tolist(), b["texts"], b["texts_a"], b["texts_b"],
                b["skipped"])

    full = [key(b) for b in build()]
    first = build()
    it = iter(first)
    head = [key(next(it)) for _ in range(4)]
    state = first.state_dict()
    # 12 pairs used: pass 0's 7 (batches 2, 2, 2, 1), then 2 + 2 + 2 of pass 1: one left over
    assert state["text_pass"] == 1 and len(state["buffer_a"]) == 1
    resumed = build()
    resumed.load_state_dict(state)
    tail = [key(b) for b in resumed]
    assert head + tail == full
    assert resumed.text_pass == 3
