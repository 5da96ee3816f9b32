"""Minibatch pipeline (data_flow) and buffered array writers."""

from data_tools.io._read_blocks import decoded_nbytes, read_blocks
from data_tools.io._sampler import SEED_LIMIT
from data_tools.io.data_flow import BatchInfo, data_flow
from data_tools.io.flow_spec import FlowSpec, Position, parse_sample_weights, weights_digest
from data_tools.io.preprocessing import PreprocessorChain
from data_tools.io.writers import (
    bcolz_array_writer,
    buffered_array_writer,
    h5py_array_writer,
    is_complete,
    zarr_array_writer,
)

__all__ = [
    "SEED_LIMIT",
    "BatchInfo",
    "FlowSpec",
    "Position",
    "PreprocessorChain",
    "bcolz_array_writer",
    "buffered_array_writer",
    "data_flow",
    "decoded_nbytes",
    "h5py_array_writer",
    "is_complete",
    "parse_sample_weights",
    "read_blocks",
    "weights_digest",
    "zarr_array_writer",
]
