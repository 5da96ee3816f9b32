from data_wire.v1 import jobs_pb2 as _jobs_pb2
from data_wire.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_READ: _ClassVar[Role]
    ROLE_BUILD: _ClassVar[Role]

class DatasetOrigin(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATASET_ORIGIN_UNSPECIFIED: _ClassVar[DatasetOrigin]
    DATASET_ORIGIN_CONFIG: _ClassVar[DatasetOrigin]
    DATASET_ORIGIN_REGISTERED: _ClassVar[DatasetOrigin]

class Sharing(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SHARING_UNSPECIFIED: _ClassVar[Sharing]
    SHARING_INDEPENDENT: _ClassVar[Sharing]
    SHARING_PARTITIONED: _ClassVar[Sharing]
ROLE_UNSPECIFIED: Role
ROLE_READ: Role
ROLE_BUILD: Role
DATASET_ORIGIN_UNSPECIFIED: DatasetOrigin
DATASET_ORIGIN_CONFIG: DatasetOrigin
DATASET_ORIGIN_REGISTERED: DatasetOrigin
SHARING_UNSPECIFIED: Sharing
SHARING_INDEPENDENT: Sharing
SHARING_PARTITIONED: Sharing
ROLE_FIELD_NUMBER: _ClassVar[int]
role: _descriptor.FieldDescriptor

class ListDatasetsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListDatasetsResponse(_message.Message):
    __slots__ = ("datasets",)
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[DatasetDescription]
    def __init__(self, datasets: _Optional[_Iterable[_Union[DatasetDescription, _Mapping]]] = ...) -> None: ...

class DescribeDatasetRequest(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    def __init__(self, dataset: _Optional[str] = ...) -> None: ...

class ArrayDescription(_message.Message):
    __slots__ = ("name", "dtype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class DatasetDescription(_message.Message):
    __slots__ = ("name", "length", "arrays", "classes", "origin")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    ARRAYS_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    name: str
    length: int
    arrays: _containers.RepeatedCompositeFieldContainer[ArrayDescription]
    classes: _containers.RepeatedScalarFieldContainer[int]
    origin: DatasetOrigin
    def __init__(self, name: _Optional[str] = ..., length: _Optional[int] = ..., arrays: _Optional[_Iterable[_Union[ArrayDescription, _Mapping]]] = ..., classes: _Optional[_Iterable[int]] = ..., origin: _Optional[_Union[DatasetOrigin, str]] = ...) -> None: ...

class RegisteredSource(_message.Message):
    __slots__ = ("path", "key", "format")
    PATH_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    path: str
    key: str
    format: str
    def __init__(self, path: _Optional[str] = ..., key: _Optional[str] = ..., format: _Optional[str] = ...) -> None: ...

class RegisteredArray(_message.Message):
    __slots__ = ("name", "sources")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    name: str
    sources: _containers.RepeatedCompositeFieldContainer[RegisteredSource]
    def __init__(self, name: _Optional[str] = ..., sources: _Optional[_Iterable[_Union[RegisteredSource, _Mapping]]] = ...) -> None: ...

class RegisterDatasetRequest(_message.Message):
    __slots__ = ("dataset", "arrays", "class_list", "maxlen", "replace")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    ARRAYS_FIELD_NUMBER: _ClassVar[int]
    CLASS_LIST_FIELD_NUMBER: _ClassVar[int]
    MAXLEN_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    arrays: _containers.RepeatedCompositeFieldContainer[RegisteredArray]
    class_list: _containers.RepeatedScalarFieldContainer[int]
    maxlen: int
    replace: bool
    def __init__(self, dataset: _Optional[str] = ..., arrays: _Optional[_Iterable[_Union[RegisteredArray, _Mapping]]] = ..., class_list: _Optional[_Iterable[int]] = ..., maxlen: _Optional[int] = ..., replace: _Optional[bool] = ...) -> None: ...

class RemoveDatasetRequest(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    def __init__(self, dataset: _Optional[str] = ...) -> None: ...

class RemoveDatasetResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: DatasetDescription
    def __init__(self, removed: _Optional[_Union[DatasetDescription, _Mapping]] = ...) -> None: ...

class CaseRange(_message.Message):
    __slots__ = ("first", "last")
    FIRST_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    first: int
    last: int
    def __init__(self, first: _Optional[int] = ..., last: _Optional[int] = ...) -> None: ...

class Lane(_message.Message):
    __slots__ = ("index", "count")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    index: int
    count: int
    def __init__(self, index: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class Shard(_message.Message):
    __slots__ = ("rank", "world_size")
    RANK_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    rank: int
    world_size: int
    def __init__(self, rank: _Optional[int] = ..., world_size: _Optional[int] = ...) -> None: ...

class Augmentation(_message.Message):
    __slots__ = ("x_array", "y_array", "rotation_range", "width_shift_range", "height_shift_range", "shear_range", "zoom_range", "intensity_shift_range", "fill_mode", "cval_x", "cval_y", "horizontal_flip", "vertical_flip", "spline_warp", "warp_sigma", "warp_grid_size", "crop_size", "order_x", "order_y")
    X_ARRAY_FIELD_NUMBER: _ClassVar[int]
    Y_ARRAY_FIELD_NUMBER: _ClassVar[int]
    ROTATION_RANGE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_SHIFT_RANGE_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_SHIFT_RANGE_FIELD_NUMBER: _ClassVar[int]
    SHEAR_RANGE_FIELD_NUMBER: _ClassVar[int]
    ZOOM_RANGE_FIELD_NUMBER: _ClassVar[int]
    INTENSITY_SHIFT_RANGE_FIELD_NUMBER: _ClassVar[int]
    FILL_MODE_FIELD_NUMBER: _ClassVar[int]
    CVAL_X_FIELD_NUMBER: _ClassVar[int]
    CVAL_Y_FIELD_NUMBER: _ClassVar[int]
    HORIZONTAL_FLIP_FIELD_NUMBER: _ClassVar[int]
    VERTICAL_FLIP_FIELD_NUMBER: _ClassVar[int]
    SPLINE_WARP_FIELD_NUMBER: _ClassVar[int]
    WARP_SIGMA_FIELD_NUMBER: _ClassVar[int]
    WARP_GRID_SIZE_FIELD_NUMBER: _ClassVar[int]
    CROP_SIZE_FIELD_NUMBER: _ClassVar[int]
    ORDER_X_FIELD_NUMBER: _ClassVar[int]
    ORDER_Y_FIELD_NUMBER: _ClassVar[int]
    x_array: str
    y_array: str
    rotation_range: float
    width_shift_range: float
    height_shift_range: float
    shear_range: float
    zoom_range: _containers.RepeatedScalarFieldContainer[float]
    intensity_shift_range: float
    fill_mode: str
    cval_x: float
    cval_y: float
    horizontal_flip: bool
    vertical_flip: bool
    spline_warp: bool
    warp_sigma: float
    warp_grid_size: int
    crop_size: _containers.RepeatedScalarFieldContainer[int]
    order_x: int
    order_y: int
    def __init__(self, x_array: _Optional[str] = ..., y_array: _Optional[str] = ..., rotation_range: _Optional[float] = ..., width_shift_range: _Optional[float] = ..., height_shift_range: _Optional[float] = ..., shear_range: _Optional[float] = ..., zoom_range: _Optional[_Iterable[float]] = ..., intensity_shift_range: _Optional[float] = ..., fill_mode: _Optional[str] = ..., cval_x: _Optional[float] = ..., cval_y: _Optional[float] = ..., horizontal_flip: _Optional[bool] = ..., vertical_flip: _Optional[bool] = ..., spline_warp: _Optional[bool] = ..., warp_sigma: _Optional[float] = ..., warp_grid_size: _Optional[int] = ..., crop_size: _Optional[_Iterable[int]] = ..., order_x: _Optional[int] = ..., order_y: _Optional[int] = ...) -> None: ...

class SampleWeights(_message.Message):
    __slots__ = ("array", "values")
    ARRAY_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    array: str
    values: DoubleList
    def __init__(self, array: _Optional[str] = ..., values: _Optional[_Union[DoubleList, _Mapping]] = ...) -> None: ...

class DoubleList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("dataset", "batch_size", "sample_random", "seed", "sample_with_replacement", "sample_weights", "drop_incomplete_batches", "epochs", "loop_forever", "nb_io_workers", "nb_proc_workers", "shard", "augmentation", "preprocessor", "resume", "codec", "sharing", "lane", "cases", "start_epoch", "shuffle_window")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RANDOM_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_WITH_REPLACEMENT_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    DROP_INCOMPLETE_BATCHES_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    LOOP_FOREVER_FIELD_NUMBER: _ClassVar[int]
    NB_IO_WORKERS_FIELD_NUMBER: _ClassVar[int]
    NB_PROC_WORKERS_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    AUGMENTATION_FIELD_NUMBER: _ClassVar[int]
    PREPROCESSOR_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    SHARING_FIELD_NUMBER: _ClassVar[int]
    LANE_FIELD_NUMBER: _ClassVar[int]
    CASES_FIELD_NUMBER: _ClassVar[int]
    START_EPOCH_FIELD_NUMBER: _ClassVar[int]
    SHUFFLE_WINDOW_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    batch_size: int
    sample_random: bool
    seed: int
    sample_with_replacement: bool
    sample_weights: SampleWeights
    drop_incomplete_batches: bool
    epochs: int
    loop_forever: bool
    nb_io_workers: int
    nb_proc_workers: int
    shard: Shard
    augmentation: Augmentation
    preprocessor: str
    resume: _tensor_pb2.Cursor
    codec: _tensor_pb2.Codec
    sharing: Sharing
    lane: Lane
    cases: _containers.RepeatedCompositeFieldContainer[CaseRange]
    start_epoch: int
    shuffle_window: int
    def __init__(self, dataset: _Optional[str] = ..., batch_size: _Optional[int] = ..., sample_random: _Optional[bool] = ..., seed: _Optional[int] = ..., sample_with_replacement: _Optional[bool] = ..., sample_weights: _Optional[_Union[SampleWeights, _Mapping]] = ..., drop_incomplete_batches: _Optional[bool] = ..., epochs: _Optional[int] = ..., loop_forever: _Optional[bool] = ..., nb_io_workers: _Optional[int] = ..., nb_proc_workers: _Optional[int] = ..., shard: _Optional[_Union[Shard, _Mapping]] = ..., augmentation: _Optional[_Union[Augmentation, _Mapping]] = ..., preprocessor: _Optional[str] = ..., resume: _Optional[_Union[_tensor_pb2.Cursor, _Mapping]] = ..., codec: _Optional[_Union[_tensor_pb2.Codec, str]] = ..., sharing: _Optional[_Union[Sharing, str]] = ..., lane: _Optional[_Union[Lane, _Mapping]] = ..., cases: _Optional[_Iterable[_Union[CaseRange, _Mapping]]] = ..., start_epoch: _Optional[int] = ..., shuffle_window: _Optional[int] = ...) -> None: ...
