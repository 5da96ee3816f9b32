"""BatchIterableDataset against the fake DataNode (tests/data_client/conftest.py).

Matrix:
- yields tuples of writable torch tensors equal to the node's arrays (dtype kept), directly
  and through DataLoader(batch_size=None, num_workers=0); options reach the request.
- source: an address or a client factory (token sent); the client is closed afterwards.
- rank/world_size: explicit, taken from torch.distributed when initialised, defaults 0/1.
- early exit cancels the node's call; cursor for checkpoints; several DataLoader workers refused.
- a DataLoader that batches again (batch_size 16, the default 1, drop_last, inside a loader
  worker) is refused before any request; batch_size=None on the same dataset still streams.
- the README's data-parallel recipe, run as two gloo ranks: disjoint halves of every epoch.
- pin_memory without CUDA warns and is ignored; unknown stream option -> TypeError;
  a missing torch -> ImportError with the install hint.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

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


@pytest.mark.parametrize(
    "loader_options",
    [
        pytest.param({"batch_size": 16}, id="batch_size=16"),
        pytest.param({}, id="default batch_size=1"),
        pytest.param({"batch_size": 4, "drop_last": True}, id="drop_last"),
        pytest.param(
            {"batch_size": 2, "num_workers": 1, "multiprocessing_context": "spawn"},
            id="in a loader worker",
        ),
    ],
)
def test_a_dataloader_that_would_batch_again_is_refused(fake_node, loader_options):
    loader = DataLoader(BatchIterableDataset(fake_node.address, "toy", 2), **loader_options)
    with pytest.raises(RuntimeError, match=r"batch of batches.*batch_size=None"):
        next(iter(loader))
    assert fake_node.requests == []


def test_the_same_dataset_still_streams_through_an_unbatched_loader(fake_node):
    dataset = BatchIterableDataset(fake_node.address, "toy", 5)
    with pytest.raises(RuntimeError, match="batch_size=None"):
        next(iter(DataLoader(dataset, batch_size=3)))
    batches = list(DataLoader(dataset, batch_size=None))
    assert [label.tolist() for *_, label in batches] == [[0, 10, 20, 30, 40], [50, 60, 70, 80, 90]]


def readme_recipe():
    """The README's data-parallel recipe (its ```python torchrun block)."""
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    (recipe,) = re.findall(r"^```python torchrun\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)
    return recipe


def test_the_readme_data_parallel_recipe_splits_every_epoch_across_ranks(fake_node, tmp_path):
    recipe = readme_recipe()
    service = "data-node.ml.svc.cluster.local:50051"
    assert service in recipe
    assert '"disks"' in recipe
    recipe = recipe.replace(service, fake_node.address).replace('"disks"', '"toy"')
    recipe = recipe.replace("epochs=10", "epochs=2").replace(", 32,", ", 2,")
    # train_step records the labels each rank trains on.
    script = (
        "import json, os\nseen = []\ndef train_step(batch):\n    seen.extend(batch[-1].tolist())\n"
        + recipe
        + "json.dump(seen, open(os.environ['SEEN'], 'w'))\n"
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ranks = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
                "RANK": str(rank),
                "WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "SEEN": str(tmp_path / f"rank{rank}.json"),
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]
    for process in ranks:
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 0, output
    seen = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert sorted(seen[0]) == [0, 0, 20, 20, 40, 40, 60, 60, 80, 80]  # rank 0, 2 epochs
    assert sorted(seen[1]) == [10, 10, 30, 30, 50, 50, 70, 70, 90, 90]
    shards = sorted((r.shard.rank, r.shard.world_size) for r in fake_node.requests)
    assert shards == [(0, 2), (1, 2)]
