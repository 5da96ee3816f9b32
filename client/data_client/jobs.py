"""Build jobs seen from the client: inputs, job status, and the handle ``submit_build`` returns."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Self

import grpc

from data_client.errors import translate_rpc_error
from data_wire.v1 import jobs_pb2

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "BuildJob",
    "CaseInput",
    "CaseProgress",
    "ClassProgress",
    "DatasetArray",
    "FileArray",
    "JobCalls",
    "JobInfo",
    "JobState",
    "job_info",
]


class JobState(StrEnum):
    """A job's state (the proto's JobState, lower case)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def ended(self) -> bool:
        """Whether the job has ended (succeeded, failed or cancelled)."""
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class DatasetArray:
    """A job input: one array of a dataset the node serves, read whole.

    Attributes:
        dataset: Dataset name, as ``DataNodeClient.datasets()`` lists it.
        array: Array name within the dataset, e.g. "image".
    """

    dataset: str
    array: str


@dataclass(frozen=True)
class FileArray:
    """A job input: one array in a file under the node's data root.

    Attributes:
        path: Path relative to the node's data root. The suffix gives the format: .h5/.hdf5,
            .zarr, .bcolz, or a medical image read with SimpleITK (.nii, .nii.gz, .mha, .mhd,
            .nrrd; a z, y, x array, so pass ``slice_axis=0`` to cut axial slices).
        key: HDF5 dataset path (required for HDF5) or array path in a zarr group. Default "".
    """

    path: str
    key: str = ""


@dataclass(frozen=True)
class CaseInput:
    """One case of an import job: an image and its optional label, under the data root.

    Attributes:
        image: A medical image (.nii, .nii.gz, .mha, .mhd, .nrrd) or an HDF5/zarr array
            (a ``FileArray`` with its key); a str is a path.
        label: The label (segmentation) on the image's voxel grid, likewise. Default None.
        name: The case's name. Default "": the image file's name without its suffix.
    """

    image: FileArray | str
    label: FileArray | str | None = None
    name: str = ""


@dataclass(frozen=True)
class ClassProgress:
    """Patches of one class, array ``class_<value>``.

    Attributes:
        value: The class's mask value.
        written: Patches written so far.
        total: Patches the class will hold.
        total_bytes: Bytes those patches (and mask patches) take before compression.
    """

    value: int
    written: int
    total: int
    total_bytes: int = 0


@dataclass(frozen=True)
class CaseProgress:
    """One case of an import job.

    Attributes:
        index: The case's index in the request.
        name: The case's name.
        done: Whether the case is written.
        slices: Its slices (0 until done).
        kept: The slices kept (0 until done).
    """

    index: int
    name: str
    done: bool
    slices: int
    kept: int


@dataclass(frozen=True)
class JobInfo:
    """A job as the node reports it.

    Attributes:
        job_id: The node's id of the job.
        state: Its state.
        classes: A patch build's plan and progress per class, in class order; empty until
            the job has read its inputs.
        fraction_done: Patches written over patches to write, in [0, 1].
        elapsed_seconds: Seconds the job has run (until it ended); 0 while queued.
        error: Why the job failed; "" otherwise.
        request: The request as the node accepted it, every default filled in (seed...).
        created_at: Unix time of the submission.
        started_at: Unix time the job started running; 0 if it has not.
        ended_at: Unix time the job ended; 0 if it has not.
        replaced_by: The id of the later job whose output replaced this succeeded job's
            (``overwrite``); "" if none.
        cases: An import's progress per case, in order; empty for a patch build.
    """

    job_id: str
    state: JobState
    classes: tuple[ClassProgress, ...]
    fraction_done: float
    elapsed_seconds: float
    error: str
    request: jobs_pb2.SubmitBuildJobRequest
    created_at: float
    started_at: float
    ended_at: float
    replaced_by: str = ""
    cases: tuple[CaseProgress, ...] = ()

    @property
    def output(self) -> str:
        """The output directory's name under the node's output root."""
        return self.request.output

    @property
    def patches_written(self) -> int:
        """Patches written so far, every class together."""
        return sum(c.written for c in self.classes)

    @property
    def patches_total(self) -> int:
        """Patches the job writes, every class together; 0 until known."""
        return sum(c.total for c in self.classes)


def job_info(message: jobs_pb2.Job) -> JobInfo:
    """The JobInfo of a Job message."""
    name = jobs_pb2.JobState.Name(message.state).removeprefix("JOB_STATE_")
    return JobInfo(
        job_id=message.job_id,
        state=JobState(name.lower()),
        classes=tuple(
            ClassProgress(c.value, c.written, c.total, c.total_bytes) for c in message.classes
        ),
        fraction_done=message.fraction_done,
        elapsed_seconds=message.elapsed_seconds,
        error=message.error,
        request=message.request,
        created_at=message.created_at,
        started_at=message.started_at,
        ended_at=message.ended_at,
        replaced_by=message.replaced_by,
        cases=tuple(CaseProgress(c.index, c.name, c.done, c.slices, c.kept) for c in message.cases),
    )


@dataclass(frozen=True)
class JobCalls:
    """The job RPCs of one client, with the metadata and timeout its calls carry."""

    get_job: Any
    cancel_job: Any
    watch_job: Any
    metadata: tuple[tuple[str, str], ...]
    timeout: float | None


class BuildJob:
    """A handle on one build job; ``DataNodeClient.submit_build`` and ``.job`` return one.

    Every method raises a ``data_client.errors.DataNodeError`` subclass when its call fails
    (NotFoundError when the node has no such job).
    """

    def __init__(self, job_id: str, calls: JobCalls) -> None:
        self._job_id = job_id
        self._calls = calls

    @property
    def job_id(self) -> str:
        """The node's id of the job."""
        return self._job_id

    def __repr__(self) -> str:
        return f"BuildJob({self._job_id!r})"

    def status(self) -> JobInfo:
        """The job now (GetJob)."""
        request = jobs_pb2.GetJobRequest(job_id=self._job_id)
        return job_info(self._unary(self._calls.get_job, request))

    def cancel(self) -> JobInfo:
        """Cancel the job and return it once the node has stopped it (CancelJob).

        A queued or running job ends CANCELLED and leaves no output; an ended job is returned
        unchanged.
        """
        request = jobs_pb2.CancelJobRequest(job_id=self._job_id)
        return job_info(self._unary(self._calls.cancel_job, request))

    def watch(self, timeout: float | None = None) -> Iterator[JobInfo]:
        """The job now, then each time it changes, until it ends (WatchJob).

        Args:
            timeout: Seconds the whole watch may take; None (default) waits for the end.

        Raises:
            DeadlineExceededError: ``timeout`` passed first.
        """
        request = jobs_pb2.WatchJobRequest(job_id=self._job_id)
        call = self._calls.watch_job(request, timeout=timeout, metadata=self._calls.metadata)
        try:
            for message in call:
                yield job_info(message)
        except grpc.RpcError as error:
            raise translate_rpc_error(error) from error
        finally:
            call.cancel()

    def wait(self, progress: bool = True, timeout: float | None = None) -> JobInfo:
        """Wait until the job ends and return its final status.

        The result says how the job ended: check ``state`` (and ``error``); a failed job
        raises nothing here.

        Args:
            progress: Draw a tqdm bar of the patches written on stderr. Default True.
            timeout: Seconds to wait; None (default) waits for the end.

        Raises:
            DeadlineExceededError: ``timeout`` passed first.
        """
        last = None
        with _ProgressBar(self._job_id, enabled=progress) as bar:
            for info in self.watch(timeout):
                bar.show(info)
                last = info
        return last if last is not None and last.state.ended else self.status()

    def _unary(self, rpc: Any, request: Any) -> jobs_pb2.Job:
        try:
            response: jobs_pb2.Job = rpc(
                request, timeout=self._calls.timeout, metadata=self._calls.metadata
            )
        except grpc.RpcError as error:
            raise translate_rpc_error(error) from error
        return response


class _ProgressBar:
    """A tqdm bar of patches (an import: cases) written, fed with JobInfo; nothing when disabled."""

    def __init__(self, job_id: str, *, enabled: bool) -> None:
        self._bar: Any = None
        if enabled:
            from tqdm import tqdm  # only a bar needs it

            self._bar = tqdm(total=0, unit="patch", desc=f"job {job_id[:8]}")

    def show(self, info: JobInfo) -> None:
        if self._bar is None:
            return
        if info.cases:
            self._bar.unit = "case"
            self._bar.total = len(info.cases)
            self._bar.n = sum(case.done for case in info.cases)
        else:
            self._bar.total = info.patches_total
            self._bar.n = info.patches_written
        self._bar.set_postfix_str(info.state.value, refresh=False)
        self._bar.refresh()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._bar is not None:
            self._bar.close()
