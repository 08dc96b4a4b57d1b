"""The trainer's data position: a sharded, per-epoch shuffled batch stream that a
StatefulDataLoader (with worker processes) resumes exactly."""
import numpy as np
import pytest
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from clippo.train.data import ShardedBatchSampler, dataset_type

pytestmark = pytest.mark.filterwarnings("ignore:'set_vital' is deprecated")


class Indices(torch.utils.data.Dataset):
    def __len__(self):
        return 23

    def __getitem__(self, i):
        return i


def test_ranks_split_each_epoch_and_epochs_reshuffle():
    n, world = 23, 3
    per_rank = n // world
    samplers = [ShardedBatchSampler(n, 4, r, world, seed=5) for r in range(world)]
    for epoch in range(3):
        shards = [s.shard(epoch) for s in samplers]
        flat = np.concatenate(shards)
        assert all(len(s) == per_rank for s in shards)
        assert len(set(flat.tolist())) == per_rank * world  # disjoint
        order = np.random.default_rng([5, epoch]).permutation(n)
        assert flat.tolist() == [int(order[r + world * i]) for r in range(world)
                                 for i in range(per_rank)]
    assert samplers[0].shard(0).tolist() != samplers[0].shard(1).tolist()
    # batches run across the epoch boundary: rank 0's stream is shard(0) then shard(1) ...
    s = samplers[0]
    stream = np.concatenate([s.shard(0), s.shard(1), s.shard(2)]).tolist()
    it = iter(s)
    got = [next(it) for _ in range(5)]
    assert got == [stream[4 * k:4 * k + 4] for k in range(5)]
    assert s.state_dict() == {"position": 5}


@pytest.mark.parametrize("workers", [0, 2])
def test_stateful_loader_resumes_exactly(workers):
    def loader():
        return StatefulDataLoader(Indices(), batch_sampler=ShardedBatchSampler(23, 4, seed=1),
                                  num_workers=workers, collate_fn=list)
    ref = loader()
    it = iter(ref)
    want = [next(it) for _ in range(12)]
    first = loader()
    it = iter(first)
    head = [next(it) for _ in range(5)]
    state = first.state_dict()
    del it
    resumed = loader()
    resumed.load_state_dict(state)
    it = iter(resumed)
    assert head + [next(it) for _ in range(7)] == want


def test_dataset_type_by_name(tmp_path):
    assert dataset_type("builtin") == "builtin"
    assert dataset_type("data/train.csv") == "csv"
    assert dataset_type("shards/{000000..000009}.tar") == "webdataset"
    assert dataset_type("anything", "csv") == "csv"
    (tmp_path / "a.tar").write_bytes(b"")
    assert dataset_type(str(tmp_path)) == "webdataset"
    with pytest.raises(ValueError, match="--dataset-type"):
        dataset_type(str(tmp_path / "file.parquet"))
    with pytest.raises(ValueError, match="cannot be split"):
        ShardedBatchSampler(3, 2, 0, 4)
