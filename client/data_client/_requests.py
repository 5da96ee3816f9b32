"""Request building: the client's arguments checked and turned into wire messages.

Streams (shard, sharing, cases, sample weights, augmentation), build and import jobs. The
node is the authority on every field; these checks fail obvious mistakes early.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Final, TypeAlias, cast

import numpy as np
import numpy.typing as npt

from data_client._args import did_you_mean, is_int, parse_int, parse_name, parse_option
from data_client.jobs import CaseInput, DatasetArray, FileArray
from data_wire.v1 import data_node_pb2, jobs_pb2, tensor_pb2
from data_wire.v1.data_node_pb2 import Augmentation, CaseRange, SampleWeights, Shard
from data_wire.v1.tensor_pb2 import Cursor

__all__ = [
    "CODECS",
    "SEED_LIMIT",
    "ArrayInput",
    "ArraySources",
    "CaseSelection",
    "build_array_input",
    "build_augmentation",
    "build_case_input",
    "build_cases",
    "build_sample_weights",
    "build_shard",
    "parse_cursor",
    "parse_sharing",
    "set_output_fields",
    "warn_on_image_slice_axis",
]

CODECS: Final[dict[str, tensor_pb2.Codec]] = {
    name.removeprefix("CODEC_").lower(): cast("tensor_pb2.Codec", value)
    for name, value in tensor_pb2.Codec.items()
    if value != tensor_pb2.CODEC_UNSPECIFIED
}
"""``stream(codec=...)`` names ("none", "lz4", "zstd") -> the wire's Codec values, read from
the proto's Codec enum."""

SEED_LIMIT: Final = 2**32
"""Seeds of streams lie in [0, SEED_LIMIT): data_tools.io.SEED_LIMIT, which the node enforces
(StreamRequest.seed); the client may not import the library, so it states the bound again."""

# The node reads these as medical images, (z, y, x) arrays (data_tools.medical.IMAGE_SUFFIXES).
_IMAGE_SUFFIXES: Final = (".mha", ".mhd", ".nii", ".nii.gz", ".nrrd")

ArrayInput: TypeAlias = DatasetArray | FileArray | str
"""Accepted forms of a build job's volume or mask; a ``str`` is ``FileArray(path)``."""

ArraySources: TypeAlias = FileArray | str | Sequence[FileArray | str]
"""Accepted forms of a registered dataset's array: one source or a list of them, each a
``FileArray`` (path under the node's data root and array key) or a path (``FileArray(path)``)."""

CaseSelection: TypeAlias = (
    str | int | range | tuple[int, int] | Sequence[int | range | tuple[int, int]]
)
"""Accepted forms of ``stream(cases=...)``: ``"0-79,90"`` (inclusive ranges and single cases,
comma-separated), a case number, a ``range`` (``range(80)`` is 0-79), a ``(first, last)`` pair
(inclusive), or a sequence of these."""


def build_shard(rank: Any, world_size: Any) -> Shard:
    world_size = parse_int("world_size", world_size, minimum=1)
    return Shard(
        rank=parse_int("rank", rank, minimum=0, maximum=world_size - 1), world_size=world_size
    )


_SHARING: Final = {
    "independent": data_node_pb2.SHARING_INDEPENDENT,
    "partitioned": data_node_pb2.SHARING_PARTITIONED,
}


def parse_sharing(sharing: str | None, world_size: int) -> Any:
    if sharing is None:
        sharing = "partitioned" if world_size > 1 else "independent"
    return _SHARING[parse_option("sharing", sharing, _SHARING)]


_CASES_FORM: Final = (
    "case numbers >= 0 and inclusive ranges first-last, comma-separated (e.g. '0-79,90'), "
    "a range, a (first, last) pair, or a sequence of these"
)


def build_cases(cases: CaseSelection) -> list[CaseRange]:
    """The ``StreamRequest.cases`` ranges of a ``CaseSelection``.

    Raises:
        TypeError, ValueError: ``cases`` has none of the accepted forms, holds a range with
            first > last or a negative case, or selects nothing; the message names cases.
    """
    if isinstance(cases, str):
        parts: list[Any] = [part.strip() for part in cases.split(",")]
    elif (isinstance(cases, Sequence) and not isinstance(cases, range | tuple)) or (
        isinstance(cases, tuple) and not (len(cases) == 2 and all(is_int(v) for v in cases))
    ):
        parts = list(cases)
    else:
        parts = [cases]
    if not parts:
        raise ValueError(f"Expected cases to hold {_CASES_FORM}. Got {cases!r} instead.")
    ranges = [_case_range(part, cases) for part in parts]
    return [CaseRange(first=first, last=last) for first, last in ranges]


def _case_range(part: Any, cases: Any) -> tuple[int, int]:
    first: Any
    last: Any
    if isinstance(part, str):
        first, sep, last = part.partition("-")
        if not sep:
            last = first
        try:
            first, last = int(first), int(last)
        except ValueError:
            raise ValueError(
                f"Expected cases to hold {_CASES_FORM}. Got {cases!r} ({part!r}) instead."
            ) from None
    elif isinstance(part, range):
        if part.step != 1 or not part:
            raise ValueError(
                f"Expected cases' ranges to have step 1 and hold a case. Got {part!r} instead."
            )
        first, last = part.start, part.stop - 1
    elif isinstance(part, tuple) and len(part) == 2:
        first, last = part
    else:
        first = last = part
    if not (is_int(first) and is_int(last)):
        raise TypeError(f"Expected cases to hold {_CASES_FORM}. Got {cases!r} instead.")
    if not 0 <= int(first) <= int(last):
        raise ValueError(
            f"Expected each of cases to be 0 <= first <= last. Got {first}-{last} instead."
        )
    return int(first), int(last)


def build_sample_weights(weights: Sequence[float] | npt.ArrayLike | str) -> SampleWeights:
    if isinstance(weights, str):
        return SampleWeights(array=parse_name("sample_weights", weights))
    values = np.asarray(weights, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(
            "Expected sample_weights to be an array name or a 1-D sequence of floats. "
            f"Got an array of shape {values.shape} instead."
        )
    message = SampleWeights()
    message.values.values.extend(values.tolist())
    return message


def build_augmentation(augmentation: Mapping[str, Any]) -> Augmentation:
    """The Augmentation message for an ``augmentation`` dict; its keys are the message's fields."""
    fields = Augmentation.DESCRIPTOR.fields_by_name
    message = Augmentation()
    for key, value in augmentation.items():
        field = fields.get(key)
        if field is None:
            raise ValueError(
                f"Expected augmentation keys among {sorted(fields)}. Got {key!r} instead."
                + did_you_mean(key, fields)
            )
        if value is None:
            continue
        try:
            if field.is_repeated:
                values = np.atleast_1d(np.asarray(value)).tolist()
                getattr(message, key).extend(values)
            else:
                setattr(message, key, value)
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"Expected augmentation[{key!r}] to be {_describe_field(field)}. Got {value!r} instead."
            ) from error
    if not message.x_array:
        raise ValueError(
            "Expected augmentation['x_array'] to name the array to transform. Got none."
        )
    return message


def _describe_field(field: Any) -> str:
    kind = {
        field.TYPE_STRING: "a string",
        field.TYPE_BOOL: "a bool",
        field.TYPE_DOUBLE: "a float",
    }.get(field.type, "an integer")
    return f"{kind} or a sequence of them" if field.is_repeated else kind


def parse_cursor(resume: Cursor | bytes | None) -> Cursor | None:
    if resume is None or isinstance(resume, Cursor):
        return resume
    if isinstance(resume, bytes):
        return Cursor.FromString(resume)
    raise TypeError(
        f"Expected resume to be a Cursor, its serialized bytes or None. Got {resume!r} instead."
    )


def build_array_input(argument: str, value: Any) -> jobs_pb2.ArrayInput:
    if isinstance(value, str | FileArray):
        return jobs_pb2.ArrayInput(file=_file_array(argument, value))
    if isinstance(value, DatasetArray):
        return jobs_pb2.ArrayInput(
            dataset_array=jobs_pb2.DatasetArray(dataset=value.dataset, array=value.array)
        )
    raise TypeError(
        f"Expected {argument} to be a DatasetArray, a FileArray or a path. Got {value!r} instead."
    )


def set_output_fields(
    request: jobs_pb2.SubmitBuildJobRequest,
    output: Any,
    batchsize: Any,
    file_format: Any,
    writer_options: Any,
    register_as: Any,
    overwrite: Any,
    seed: Any,
) -> None:
    """Check and set the fields every build job has: where and how its result is written."""
    request.batchsize = parse_int("batchsize", batchsize, minimum=1)
    request.file_format = parse_name("file_format", file_format)
    request.writer_options = _dump_writer_options(writer_options)
    request.output = parse_name("output", output)
    request.register_as = "" if register_as is None else parse_name("register_as", register_as)
    request.overwrite = bool(overwrite)
    if seed is not None:
        request.seed = parse_int("seed", seed, minimum=0, maximum=2**64 - 1)


def warn_on_image_slice_axis(request: jobs_pb2.SubmitBuildJobRequest) -> None:
    path = request.volume.file.path
    if path.lower().endswith(_IMAGE_SUFFIXES) and request.slice_axis in (-1, 2):
        warnings.warn(
            f"volume {path!r} is a medical image, a (z, y, x) array: slice_axis="
            f"{request.slice_axis} cuts it along x. Pass slice_axis=0 to cut its axial slices.",
            stacklevel=3,
        )


def build_case_input(index: int, case: Any) -> jobs_pb2.CaseInput:
    if not isinstance(case, CaseInput):
        raise TypeError(f"Expected cases[{index}] to be a CaseInput. Got {case!r} instead.")
    message = jobs_pb2.CaseInput(image=_file_array(f"cases[{index}].image", case.image))
    message.name = case.name
    if case.label is not None:
        message.label.CopyFrom(_file_array(f"cases[{index}].label", case.label))
    return message


def _file_array(argument: str, value: Any) -> jobs_pb2.FileArray:
    if isinstance(value, str):
        value = FileArray(value)
    if not isinstance(value, FileArray):
        raise TypeError(f"Expected {argument} to be a FileArray or a path. Got {value!r} instead.")
    return jobs_pb2.FileArray(path=value.path, key=value.key)


def _dump_writer_options(options: Mapping[str, Any] | None) -> str:
    if options is None:
        return ""
    if not isinstance(options, Mapping):
        raise TypeError(f"Expected writer_options to be a dict or None. Got {options!r} instead.")
    try:
        return json.dumps(dict(options))
    except TypeError as error:
        raise TypeError(f"Expected writer_options to be JSON-serializable: {error}") from error
