"""BatchIterableDataset against the fake DataNode (tests/data_client/conftest.py).

Matrix:
- yields tuples of writable torch tensors equal to the node's arrays (dtype kept), directly
  and through DataLoader(batch_size=None, num_workers=0); options reach the request.
- source: an address or a client factory (token sent); the client is closed afterwards.
- rank/world_size: explicit, taken from torch.distributed when initialised, defaults 0/1.
- early exit cancels the node's call; cursor for checkpoints; several DataLoader workers refused.
- pin_memory without CUDA warns and is ignored; unknown stream option -> TypeError;
  a missing torch -> ImportError with the install hint.
"""

from __future__ import annotations

import functools
import importlib
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from data_client import DataNodeClient, torch_adapter
from data_client.torch_adapter import BatchIterableDataset


def test_yields_tuples_of_torch_tensors(fake_node):
    dataset = BatchIterableDataset(
        fake_node.address, "toy", 4, sample_random=True, seed=3, epochs=2
    )
    batches = list(dataset)
    assert len(batches) == 6
    first = batches[0]
    assert [t.dtype for t in first] == [torch.float32, torch.uint8, torch.int64]
    indices = np.arange(4)
    for tensor, expected in zip(first, fake_node.arrays.values(), strict=True):
        assert isinstance(tensor, torch.Tensor)
        np.testing.assert_array_equal(tensor.numpy(), expected[indices])
    first[0].add_(1)  # writable, owned memory
    request = fake_node.requests[0]
    assert request.sample_random
    assert (request.seed, request.epochs, request.batch_size) == (3, 2, 4)
    assert dataset.cursor.epoch == 2


def test_through_a_dataloader(fake_node):
    dataset = BatchIterableDataset(fake_node.address, "toy", 5)
    loader = DataLoader(dataset, batch_size=None, num_workers=0)
    labels = torch.cat([label for _, _, label in loader])
    assert labels.tolist() == fake_node.arrays["label"].tolist()


def test_client_factory_is_used_and_closed(fake_node):
    fake_node.required_token = "t0k"
    clients = []

    def factory():
        clients.append(DataNodeClient(fake_node.address, token="t0k"))
        return clients[-1]

    assert len(list(BatchIterableDataset(factory, "toy", 5))) == 2
    assert fake_node.metadata[-1]["authorization"] == "Bearer t0k"
    with pytest.raises(ValueError, match="closed"):
        clients[0].describe("toy")


def test_explicit_rank_and_world_size(fake_node):
    dataset = BatchIterableDataset(fake_node.address, "toy", 10, rank=1, world_size=4)
    (batch,) = list(dataset)
    assert batch[2].tolist() == [10, 50, 90]
    shard = fake_node.requests[0].shard
    assert (shard.rank, shard.world_size) == (1, 4)


def test_rank_and_world_size_from_torch_distributed(fake_node, monkeypatch):
    dataset = BatchIterableDataset(fake_node.address, "toy", 10)
    assert dataset.shard() == (0, 1)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 2)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 3)
    (batch,) = list(dataset)
    assert batch[2].tolist() == [20, 50, 80]
    assert BatchIterableDataset(fake_node.address, "toy", 1, rank=0).shard() == (0, 3)


def test_leaving_early_cancels_the_stream(fake_node):
    dataset = BatchIterableDataset(fake_node.address, "toy", 2, loop_forever=True)
    iterator = iter(dataset)
    next(iterator)
    iterator.close()
    assert fake_node.stream_ended.wait(30)


def test_several_dataloader_workers_are_refused(fake_node, monkeypatch):
    class Worker:
        num_workers = 2

    monkeypatch.setattr(torch_adapter, "get_worker_info", Worker)
    with pytest.raises(RuntimeError, match="num_workers=0"):
        next(iter(BatchIterableDataset(fake_node.address, "toy", 2)))
    assert fake_node.requests == []


def test_pin_memory_without_cuda_warns_and_is_ignored(fake_node):
    with pytest.warns(UserWarning, match="pin_memory=True is ignored"):
        dataset = BatchIterableDataset(fake_node.address, "toy", 5, pin_memory=True)
    assert not any(t.is_pinned() for batch in dataset for t in batch)


def test_unknown_stream_option_is_refused_at_construction(fake_node):
    with pytest.raises(TypeError, match="shufle"):
        BatchIterableDataset(fake_node.address, "toy", 2, shufle=True)


def test_missing_torch_gives_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.delitem(sys.modules, "data_client.torch_adapter")
    with pytest.raises(ImportError, match=r"pip install 'data-tools\[torch\]'"):
        importlib.import_module("data_client.torch_adapter")


def test_factory_may_be_a_partial(fake_node):
    source = functools.partial(DataNodeClient, fake_node.address, timeout=30)
    assert len(list(BatchIterableDataset(source, "toy", 10))) == 1
