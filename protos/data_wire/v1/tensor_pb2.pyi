from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Codec(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CODEC_UNSPECIFIED: _ClassVar[Codec]
    CODEC_NONE: _ClassVar[Codec]
    CODEC_LZ4: _ClassVar[Codec]
    CODEC_ZSTD: _ClassVar[Codec]
CODEC_UNSPECIFIED: Codec
CODEC_NONE: Codec
CODEC_LZ4: Codec
CODEC_ZSTD: Codec

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data", "codec", "raw_nbytes")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    RAW_NBYTES_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    codec: Codec
    raw_nbytes: int
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ..., codec: _Optional[_Union[Codec, str]] = ..., raw_nbytes: _Optional[int] = ...) -> None: ...

class Cursor(_message.Message):
    __slots__ = ("dataset", "seed", "epoch", "batch_index", "fingerprint")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    BATCH_INDEX_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    seed: int
    epoch: int
    batch_index: int
    fingerprint: str
    def __init__(self, dataset: _Optional[str] = ..., seed: _Optional[int] = ..., epoch: _Optional[int] = ..., batch_index: _Optional[int] = ..., fingerprint: _Optional[str] = ...) -> None: ...

class Batch(_message.Message):
    __slots__ = ("arrays", "cursor", "indices", "epoch", "batch_index", "decoded_bytes")
    ARRAYS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    INDICES_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    BATCH_INDEX_FIELD_NUMBER: _ClassVar[int]
    DECODED_BYTES_FIELD_NUMBER: _ClassVar[int]
    arrays: _containers.RepeatedCompositeFieldContainer[Tensor]
    cursor: Cursor
    indices: _containers.RepeatedScalarFieldContainer[int]
    epoch: int
    batch_index: int
    decoded_bytes: int
    def __init__(self, arrays: _Optional[_Iterable[_Union[Tensor, _Mapping]]] = ..., cursor: _Optional[_Union[Cursor, _Mapping]] = ..., indices: _Optional[_Iterable[int]] = ..., epoch: _Optional[int] = ..., batch_index: _Optional[int] = ..., decoded_bytes: _Optional[int] = ...) -> None: ...
