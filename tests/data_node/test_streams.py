"""The stream's transform is library code: what worker processes receive from the node.

Matrix: augmentation alone, a registered preprocessor alone, both, neither: the transform is
the library's SampleAugmentation (its spec the library's parse of the request's options, the
seed the stream's), the registered function itself, a PreprocessorChain of the two in that
order, or None; unpickling it (as a worker does) imports no data_node module; y_array naming
the x_array is refused naming the field. Worker counts left 0: a transform may use up to
max_nb_proc_workers of the pool (a count given is the cap; no transform, no process), and
reads run on min(usable cores, max_nb_io_workers) threads.
"""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from data_flow_support import count_loaded_modules
from node_support import noisy

from data_node import wire
from data_node.catalog.datasets import Dataset
from data_node.config import LimitsConfig
from data_node.errors import RequestError
from data_node.resources import usable_cores
from data_node.streaming.streams import parse_stream_request
from data_tools.data_augmentation import SampleAugmentation, parse_augmentation_spec
from data_tools.io import PreprocessorChain, data_flow
from data_wire.v1 import data_node_pb2, tensor_pb2

LENGTH = 12
DATASET = Dataset(
    "toy",
    (
        ("image", np.zeros((LENGTH, 1, 8, 8), np.float32)),
        ("weights", np.linspace(1.0, 2.0, LENGTH)),
        ("mask", np.zeros((LENGTH, 8, 8), np.uint8)),
    ),
)
PREPROCESSORS = {"noisy": "node_support:noisy"}
AUGMENTATION = data_node_pb2.Augmentation(
    x_array="image", y_array="mask", rotation_range=20.0, zoom_range=[0.9, 1.2], crop_size=[6, 5]
)


LIMITS = LimitsConfig()


def plan(limits=LIMITS, **fields):
    request = data_node_pb2.StreamRequest(
        **{"dataset": "toy", "batch_size": 4, "seed": 17, "epochs": 1} | fields
    )
    return parse_stream_request(request, DATASET, limits, PREPROCESSORS)


def transform(**fields):
    return plan(**fields).transform


class RecordingUnpickler(pickle.Unpickler):
    """Unpickles as a worker does, recording every module it imports a name from."""

    def __init__(self, data):
        super().__init__(io.BytesIO(data))
        self.modules = set()

    def find_class(self, module, name):
        self.modules.add(module)
        return super().find_class(module, name)


def modules_a_worker_imports(preprocessor):
    unpickler = RecordingUnpickler(pickle.dumps(preprocessor))
    assert unpickler.load() == preprocessor
    return unpickler.modules


def test_the_augmentation_is_the_librarys_per_sample_map():
    augment = transform(augmentation=AUGMENTATION)
    assert isinstance(augment, SampleAugmentation)
    assert (augment.seed, augment.x_position, augment.y_position) == (17, 0, 2)
    assert augment.spec == parse_augmentation_spec(
        rotation_range=20.0, zoom_range=(0.9, 1.2), crop_size=(6, 5)
    )
    modules = modules_a_worker_imports(augment)
    assert "data_tools.data_augmentation._samples" in modules
    assert not [m for m in modules if m.split(".")[0] == "data_node"]


def test_a_preprocessor_alone_is_the_registered_function():
    assert transform(preprocessor="noisy") is noisy
    assert transform() is None


def test_augmentation_then_preprocessor_is_a_library_chain():
    chain = transform(augmentation=AUGMENTATION, preprocessor="noisy")
    assert isinstance(chain, PreprocessorChain)
    augment, preprocessor = chain.stages
    assert isinstance(augment, SampleAugmentation)
    assert preprocessor is noisy
    modules = modules_a_worker_imports(chain)
    assert {"data_tools.io.preprocessing", "node_support"} <= modules
    assert not [m for m in modules if m.split(".")[0] == "data_node"]


def test_y_array_naming_the_x_array_is_refused():
    same = data_node_pb2.Augmentation(x_array="image", y_array="image")
    with pytest.raises(RequestError, match=r"^augmentation\.y_array: Expected an array other"):
        transform(augmentation=same)


def test_a_worker_process_of_the_plan_loads_no_data_node_module():
    stream = plan(augmentation=AUGMENTATION, preprocessor="noisy", nb_proc_workers=1)
    assert stream.flow.nb_proc_workers == 1
    probe = PreprocessorChain((stream.transform, count_loaded_modules))
    arrays = [array for _, array in DATASET.arrays]
    with data_flow.from_spec(arrays, stream.flow, preprocessor=probe) as flow:
        batches = flow.flow()
        *_, counts = next(batches)
        batches.close()
    node_modules, library_modules = counts[0]
    assert node_modules == 0
    assert library_modules > 0  # the probe does see what the worker imported


@pytest.mark.parametrize("transform", [{"augmentation": AUGMENTATION}, {"preprocessor": "noisy"}])
def test_a_transform_left_without_a_worker_count_may_use_the_whole_pool(transform):
    assert plan(**transform).flow.nb_proc_workers == LimitsConfig().max_nb_proc_workers
    assert LimitsConfig().max_nb_proc_workers >= usable_cores()  # the pool's default size
    limits = LimitsConfig(max_nb_proc_workers=3)
    assert plan(limits, **transform).flow.nb_proc_workers == 3
    assert plan(limits, nb_proc_workers=2, **transform).flow.nb_proc_workers == 2
    assert plan().flow.nb_proc_workers == 0  # nothing to run in a worker


def test_workers_left_out_do_not_grow_the_reserved_memory():
    """Whatever a stream's cap, its shared-memory blocks are its batches in flight."""
    limits = LimitsConfig(max_in_flight=3)
    plans = [plan(limits, augmentation=AUGMENTATION, nb_proc_workers=n) for n in (0, 1, 4)]
    assert {p.flow.in_flight for p in plans} == {3}
    assert {p.memory_bytes for p in plans} == {plans[0].batch_bytes * (3 + 3 + 3)}


@pytest.mark.parametrize("max_nb_io_workers", [1, 8])
def test_reads_left_without_a_thread_count_use_the_usable_cores(max_nb_io_workers):
    limits = LimitsConfig(max_nb_io_workers=max_nb_io_workers)
    assert plan(limits).flow.nb_io_workers == min(usable_cores(), max_nb_io_workers)
    assert plan(limits, nb_io_workers=1).flow.nb_io_workers == 1


def test_a_codec_of_the_proto_without_an_encoder_is_refused_at_request_time(monkeypatch):
    assert plan(codec=tensor_pb2.CODEC_ZSTD).codec == tensor_pb2.CODEC_ZSTD
    assert plan(codec=tensor_pb2.CODEC_UNSPECIFIED).codec == tensor_pb2.CODEC_NONE
    encoders = {c: p for c, p in wire._PACKERS.items() if c != tensor_pb2.CODEC_ZSTD}
    monkeypatch.setattr(wire, "_PACKERS", encoders)
    with pytest.raises(
        RequestError,
        match=r"^codec: Expected one of CODEC_UNSPECIFIED, CODEC_NONE, CODEC_LZ4\. Got 3 instead",
    ):
        plan(codec=tensor_pb2.CODEC_ZSTD)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"sample_with_replacement": True}, r"^sample_random: Expected true when sample_with_"),
        (
            {"sample_weights": data_node_pb2.SampleWeights(array="weights")},
            r"^sample_random: Expected true when sample_weights",
        ),
    ],
)
def test_the_flow_plans_refusals_name_the_request_field(fields, message):
    with pytest.raises(RequestError, match=message):
        plan(**fields)


def test_a_resume_at_the_end_of_an_epoch_starts_the_next_one():
    first = plan(sample_random=True, epochs=2)
    cursor = first.cursor(0, first.flow.batches_per_epoch - 1)
    at_end = tensor_pb2.Cursor()
    at_end.CopyFrom(cursor)
    at_end.epoch, at_end.batch_index = 0, first.flow.batches_per_epoch
    resumed = plan(sample_random=True, epochs=2, resume=at_end)
    assert tuple(resumed.flow.start) == (1, 0)
    past = tensor_pb2.Cursor()
    past.CopyFrom(at_end)
    past.batch_index += 1
    with pytest.raises(
        RequestError,
        match=r"^resume\.batch_index: Expected an integer in \[0, 3\) .* so in \[0, 3\]\. Got 4",
    ):
        plan(sample_random=True, epochs=2, resume=past)
