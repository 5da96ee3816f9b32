from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    JOB_STATE_QUEUED: _ClassVar[JobState]
    JOB_STATE_RUNNING: _ClassVar[JobState]
    JOB_STATE_SUCCEEDED: _ClassVar[JobState]
    JOB_STATE_FAILED: _ClassVar[JobState]
    JOB_STATE_CANCELLED: _ClassVar[JobState]
JOB_STATE_UNSPECIFIED: JobState
JOB_STATE_QUEUED: JobState
JOB_STATE_RUNNING: JobState
JOB_STATE_SUCCEEDED: JobState
JOB_STATE_FAILED: JobState
JOB_STATE_CANCELLED: JobState

class ArrayInput(_message.Message):
    __slots__ = ("dataset_array", "file")
    DATASET_ARRAY_FIELD_NUMBER: _ClassVar[int]
    FILE_FIELD_NUMBER: _ClassVar[int]
    dataset_array: DatasetArray
    file: FileArray
    def __init__(self, dataset_array: _Optional[_Union[DatasetArray, _Mapping]] = ..., file: _Optional[_Union[FileArray, _Mapping]] = ...) -> None: ...

class DatasetArray(_message.Message):
    __slots__ = ("dataset", "array")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    ARRAY_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    array: str
    def __init__(self, dataset: _Optional[str] = ..., array: _Optional[str] = ...) -> None: ...

class FileArray(_message.Message):
    __slots__ = ("path", "key")
    PATH_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    path: str
    key: str
    def __init__(self, path: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class SubmitBuildJobRequest(_message.Message):
    __slots__ = ("volume", "mask", "patchsize", "class_list", "random_order", "batchsize", "max_patches_per_class", "file_format", "writer_options", "output", "register_as", "overwrite", "slice_axis", "seed", "executor", "scheduler_address", "store_masks", "import_cases")
    VOLUME_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    PATCHSIZE_FIELD_NUMBER: _ClassVar[int]
    CLASS_LIST_FIELD_NUMBER: _ClassVar[int]
    RANDOM_ORDER_FIELD_NUMBER: _ClassVar[int]
    BATCHSIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_PATCHES_PER_CLASS_FIELD_NUMBER: _ClassVar[int]
    FILE_FORMAT_FIELD_NUMBER: _ClassVar[int]
    WRITER_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    REGISTER_AS_FIELD_NUMBER: _ClassVar[int]
    OVERWRITE_FIELD_NUMBER: _ClassVar[int]
    SLICE_AXIS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STORE_MASKS_FIELD_NUMBER: _ClassVar[int]
    IMPORT_CASES_FIELD_NUMBER: _ClassVar[int]
    volume: ArrayInput
    mask: ArrayInput
    patchsize: int
    class_list: _containers.RepeatedScalarFieldContainer[int]
    random_order: bool
    batchsize: int
    max_patches_per_class: int
    file_format: str
    writer_options: str
    output: str
    register_as: str
    overwrite: bool
    slice_axis: int
    seed: int
    executor: str
    scheduler_address: str
    store_masks: bool
    import_cases: ImportCases
    def __init__(self, volume: _Optional[_Union[ArrayInput, _Mapping]] = ..., mask: _Optional[_Union[ArrayInput, _Mapping]] = ..., patchsize: _Optional[int] = ..., class_list: _Optional[_Iterable[int]] = ..., random_order: _Optional[bool] = ..., batchsize: _Optional[int] = ..., max_patches_per_class: _Optional[int] = ..., file_format: _Optional[str] = ..., writer_options: _Optional[str] = ..., output: _Optional[str] = ..., register_as: _Optional[str] = ..., overwrite: _Optional[bool] = ..., slice_axis: _Optional[int] = ..., seed: _Optional[int] = ..., executor: _Optional[str] = ..., scheduler_address: _Optional[str] = ..., store_masks: _Optional[bool] = ..., import_cases: _Optional[_Union[ImportCases, _Mapping]] = ...) -> None: ...

class CaseInput(_message.Message):
    __slots__ = ("image", "label", "name")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    image: FileArray
    label: FileArray
    name: str
    def __init__(self, image: _Optional[_Union[FileArray, _Mapping]] = ..., label: _Optional[_Union[FileArray, _Mapping]] = ..., name: _Optional[str] = ...) -> None: ...

class ImportCases(_message.Message):
    __slots__ = ("cases", "slice_axis", "orientation", "spacing", "size", "clip", "normalize", "keep_unlabelled", "label_values")
    CASES_FIELD_NUMBER: _ClassVar[int]
    SLICE_AXIS_FIELD_NUMBER: _ClassVar[int]
    ORIENTATION_FIELD_NUMBER: _ClassVar[int]
    SPACING_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CLIP_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    KEEP_UNLABELLED_FIELD_NUMBER: _ClassVar[int]
    LABEL_VALUES_FIELD_NUMBER: _ClassVar[int]
    cases: _containers.RepeatedCompositeFieldContainer[CaseInput]
    slice_axis: int
    orientation: str
    spacing: _containers.RepeatedScalarFieldContainer[float]
    size: _containers.RepeatedScalarFieldContainer[int]
    clip: _containers.RepeatedScalarFieldContainer[float]
    normalize: str
    keep_unlabelled: float
    label_values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, cases: _Optional[_Iterable[_Union[CaseInput, _Mapping]]] = ..., slice_axis: _Optional[int] = ..., orientation: _Optional[str] = ..., spacing: _Optional[_Iterable[float]] = ..., size: _Optional[_Iterable[int]] = ..., clip: _Optional[_Iterable[float]] = ..., normalize: _Optional[str] = ..., keep_unlabelled: _Optional[float] = ..., label_values: _Optional[_Iterable[int]] = ...) -> None: ...

class ClassProgress(_message.Message):
    __slots__ = ("value", "written", "total", "total_bytes")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    value: int
    written: int
    total: int
    total_bytes: int
    def __init__(self, value: _Optional[int] = ..., written: _Optional[int] = ..., total: _Optional[int] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class CaseProgress(_message.Message):
    __slots__ = ("index", "name", "done", "slices", "kept")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    SLICES_FIELD_NUMBER: _ClassVar[int]
    KEPT_FIELD_NUMBER: _ClassVar[int]
    index: int
    name: str
    done: bool
    slices: int
    kept: int
    def __init__(self, index: _Optional[int] = ..., name: _Optional[str] = ..., done: _Optional[bool] = ..., slices: _Optional[int] = ..., kept: _Optional[int] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "state", "request", "classes", "fraction_done", "elapsed_seconds", "error", "created_at", "started_at", "ended_at", "cases")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    FRACTION_DONE_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    CASES_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: JobState
    request: SubmitBuildJobRequest
    classes: _containers.RepeatedCompositeFieldContainer[ClassProgress]
    fraction_done: float
    elapsed_seconds: float
    error: str
    created_at: float
    started_at: float
    ended_at: float
    cases: _containers.RepeatedCompositeFieldContainer[CaseProgress]
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., request: _Optional[_Union[SubmitBuildJobRequest, _Mapping]] = ..., classes: _Optional[_Iterable[_Union[ClassProgress, _Mapping]]] = ..., fraction_done: _Optional[float] = ..., elapsed_seconds: _Optional[float] = ..., error: _Optional[str] = ..., created_at: _Optional[float] = ..., started_at: _Optional[float] = ..., ended_at: _Optional[float] = ..., cases: _Optional[_Iterable[_Union[CaseProgress, _Mapping]]] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...
