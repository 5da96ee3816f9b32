"""Build jobs (patch builds and imports): check a request, queue it, run it, persist it.

Life cycle. ``JobManager.submit`` checks a ``SubmitBuildJobRequest`` (reading only the
inputs' headers) and queues the job. At most ``jobs.max_concurrent_jobs`` jobs run at once,
each in a process of its own started from a ``forkserver`` context, so a crash or a huge
job never takes the node down. A job is QUEUED, then RUNNING, and ends SUCCEEDED, FAILED or
CANCELLED. Its process reports the planned patches and bytes per class, then the patches
written (a patch build), or each case once written (an import), through a pipe.

Output. A job writes into ``<output_root>/.jobs/<job_id>`` and only the node publishes it:
once the process has exited after reporting success and the dataset is marked complete
(``data_tools.patches.is_dataset_complete``, ``data_tools.medical.is_import_complete``),
the directory is renamed to
``<output_root>/<output>`` (an existing one is replaced only with ``overwrite``). A failed,
cancelled or interrupted job's directory is removed, so no complete-looking output is ever
left under its name; the directory under ``.jobs`` is itself never marked complete unless
the build finished. Cancelling terminates the process (SIGTERM, then SIGKILL after
``CANCEL_GRACE`` seconds) and returns once it is gone.

register_as. A succeeded job with ``register_as`` is registered (``DatasetRegistry.register``,
as RegisterDataset does: served at once, persisted in the state dir and so served again
after a restart, removable with RemoveDataset). A patch build is served with two arrays:
``patch``, every class's patches one after the other in class order (a
``multi_source_array`` over the ``class_<v>`` arrays), with ``store_masks`` ``mask`` (the
``mask_<v>`` arrays likewise), and ``label``, the class value of each patch; its description
lists the classes. An import is served with the arrays of its store: ``image``, ``mask``
(with labels), ``case`` and ``slice``. A name of a configured dataset is refused; a
registered name (by an earlier job or RegisterDataset) is taken over, ending that dataset's
open streams.

Persistence. Every job is recorded in ``<state_dir>/jobs.sqlite3``. When the node starts,
ended jobs list as they ended; jobs that were RUNNING when the node stopped or died are
marked FAILED with ``INTERRUPTED`` as their error (they are not resumed, as their partial
output cannot be trusted), and their directories removed; QUEUED jobs are checked again
and run. Stopping the node (``close``) likewise fails its running jobs as interrupted.
One node uses a state dir and output root at a time.

Lock order: ``JobManager._changed`` (a Condition), then the store's own lock.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import shutil
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from multiprocessing import connection as mp_connection
from typing import TYPE_CHECKING, Any, cast

from data_node import _job_worker
from data_node._import import ImportSpec
from data_node._job_request import (
    FILE_FORMATS,
    IMAGE_SUFFIXES,
    STAGING_DIR,
    WRITER_OPTIONS,
    BuildPlan,
    parse_build_request,
)
from data_node._job_store import JobRecord, JobStore
from data_node.config import ArrayConfig, DatasetConfig, SourceConfig, resolve_inside
from data_node.datasets import open_dataset
from data_node.errors import (
    ConfigError,
    DataNodeError,
    DatasetExistsError,
    JobNotFoundError,
    LimitExceededError,
    NodeStoppingError,
    RequestError,
)
from data_tools.io.writers import is_complete
from data_tools.medical import CASES_CONTAINERS, Case, default_case_name, is_import_complete
from data_tools.patches import CONTAINERS, is_dataset_complete
from data_wire.v1 import jobs_pb2

if TYPE_CHECKING:
    from collections.abc import Iterator
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess
    from pathlib import Path

    from data_node._build import Counts
    from data_node.config import NodeConfig
    from data_node.datasets import Dataset, DatasetRegistry
    from data_tools._chunk_cache import ChunkCache

__all__ = [
    "CANCEL_GRACE",
    "FILE_FORMATS",
    "IMAGE_SUFFIXES",
    "INTERRUPTED",
    "PATCH_ARRAY",
    "STAGING_DIR",
    "WRITER_OPTIONS",
    "BuildPlan",
    "JobManager",
    "import_dataset_config",
    "open_patch_dataset",
    "parse_build_request",
    "patch_dataset_config",
]

PATCH_ARRAY = "patch"
MASK_ARRAY = "mask"
IMPORT_ARRAYS = ("image", "mask", "case", "slice")
INTERRUPTED = "interrupted: the node stopped while the job ran; it is not resumed, submit it again"
CANCEL_GRACE = 3.0
DATABASE = "jobs.sqlite3"

QUEUED = jobs_pb2.JOB_STATE_QUEUED
RUNNING = jobs_pb2.JOB_STATE_RUNNING
SUCCEEDED = jobs_pb2.JOB_STATE_SUCCEEDED
FAILED = jobs_pb2.JOB_STATE_FAILED
CANCELLED = jobs_pb2.JOB_STATE_CANCELLED
_ENDED = (SUCCEEDED, FAILED, CANCELLED)
_STATE_PREFIX = "JOB_STATE_"

logger = logging.getLogger(__name__)


def patch_dataset_config(
    name: str,
    directory: Path,
    file_format: str,
    classes: tuple[int, ...],
    *,
    masks: bool = False,
) -> DatasetConfig:
    """A create_dataset output as a dataset: arrays ``patch``, [``mask``,] ``label``.

    Args:
        name: The dataset's name.
        directory: The directory create_dataset wrote in.
        file_format: Its file_format.
        classes: The class values, in the order of the patches.
        masks: Keyword-only. Serve the mask patches (``store_masks``) as ``mask``.
    """
    container = directory / CONTAINERS[file_format]
    prefixes = {PATCH_ARRAY: "class"} | ({MASK_ARRAY: "mask"} if masks else {})
    arrays = tuple(
        ArrayConfig(
            array,
            tuple(
                SourceConfig(container / f"{prefix}_{value}", "bcolz")
                if file_format == "bcolz"
                else SourceConfig(container, file_format, f"{prefix}_{value}")
                for value in classes
            ),
        )
        for array, prefix in prefixes.items()
    )
    return DatasetConfig(name, arrays, class_list=classes)


def open_patch_dataset(
    name: str,
    directory: Path,
    file_format: str,
    classes: tuple[int, ...],
    cache: ChunkCache | None = None,
    *,
    masks: bool = False,
) -> Dataset:
    """Open a create_dataset output as a served dataset (see ``patch_dataset_config``).

    Args:
        cache: The decoded-chunk cache its sources read through. Default None: none.

    Raises:
        ConfigError: An array cannot be opened, or its dtype does not travel on the wire.
    """
    config = patch_dataset_config(name, directory, file_format, classes, masks=masks)
    return open_dataset(config, cache)


def import_dataset_config(name: str, directory: Path, file_format: str) -> DatasetConfig:
    """An import_cases output as a dataset: ``image``, [``mask``,] ``case``, ``slice``."""
    container = directory / CASES_CONTAINERS[file_format]
    arrays = tuple(
        ArrayConfig(array, (SourceConfig(container, file_format, array),))
        for array in IMPORT_ARRAYS
        if array != MASK_ARRAY or is_complete(container, array)
    )
    return DatasetConfig(name, arrays)


# ---------------------------------------------------------------- the jobs


@dataclass(eq=False)
class _Job:
    """One job as the manager tracks it; guarded by ``JobManager._changed``."""

    job_id: str
    request: jobs_pb2.SubmitBuildJobRequest
    state: jobs_pb2.JobState
    created_at: float
    started_at: float = 0.0
    ended_at: float = 0.0
    # A patch build: class value -> [written, total, bytes]; an import: case index ->
    # [done (0 or 1), slices, kept].
    classes: dict[int, list[int]] = field(default_factory=dict)
    error: str = ""
    plan: BuildPlan | None = None
    process: BaseProcess | None = None
    conn: Connection | None = None
    cancel_requested: bool = False
    result: Counts | None = None
    version: int = 0

    @property
    def ended(self) -> bool:
        return self.state in _ENDED

    def record(self) -> JobRecord:
        return JobRecord(
            job_id=self.job_id,
            state=_state_name(self.state),
            request=self.request.SerializeToString(),
            created_at=self.created_at,
            started_at=self.started_at,
            ended_at=self.ended_at,
            classes=tuple((key, *entry) for key, entry in self.classes.items()),
            error=self.error,
        )

    @classmethod
    def from_record(cls, record: JobRecord) -> _Job:
        return cls(
            job_id=record.job_id,
            request=jobs_pb2.SubmitBuildJobRequest.FromString(record.request),
            state=cast("jobs_pb2.JobState", jobs_pb2.JobState.Value(_STATE_PREFIX + record.state)),
            created_at=record.created_at,
            started_at=record.started_at,
            ended_at=record.ended_at,
            # Records of earlier versions hold no bytes: 0.
            classes={key: [*entry, 0][:3] for key, *entry in record.classes},
            error=record.error,
        )

    @property
    def is_import(self) -> bool:
        return self.request.HasField("import_cases")

    def message(self, now: float) -> jobs_pb2.Job:
        classes, cases = [], []
        if self.is_import:
            names = _case_names(self.request)
            cases = [
                jobs_pb2.CaseProgress(index=i, name=names[i], done=bool(d), slices=n, kept=k)
                for i, (d, n, k) in self.classes.items()
            ]
            done, total = sum(c.done for c in cases), len(cases)
        else:
            classes = [
                jobs_pb2.ClassProgress(value=v, written=w, total=t, total_bytes=b)
                for v, (w, t, b) in self.classes.items()
            ]
            done, total = sum(c.written for c in classes), sum(c.total for c in classes)
        if self.state == SUCCEEDED:
            fraction = 1.0
        else:
            fraction = done / total if total else 0.0
        elapsed = (self.ended_at or now) - self.started_at if self.started_at else 0.0
        return jobs_pb2.Job(
            job_id=self.job_id,
            state=self.state,
            request=self.request,
            classes=classes,
            cases=cases,
            fraction_done=fraction,
            elapsed_seconds=max(0.0, elapsed),
            error=self.error,
            created_at=self.created_at,
            started_at=self.started_at,
            ended_at=self.ended_at,
        )


class JobManager:
    """Queues, runs, cancels, persists and reports the node's build jobs.

    Build it (which recovers the jobs of earlier runs), ``start()`` it, and ``close()`` it
    when the node stops. Every public method is safe to call from many RPC threads.

    Args:
        config: The node's config: ``output_root``, ``state_dir``, ``data_root`` and
            ``[jobs]``.
        registry: Where inputs are looked up and results registered.

    Raises:
        OSError: The state dir or output root cannot be created.
        sqlite3.DatabaseError: The job database cannot be opened.
    """

    def __init__(self, config: NodeConfig, registry: DatasetRegistry) -> None:
        self._config = config
        self._limits = config.jobs
        self._registry = registry
        self._staging_root = config.output_root / STAGING_DIR
        config.state_dir.mkdir(parents=True, exist_ok=True)
        config.output_root.mkdir(parents=True, exist_ok=True)
        self._store = JobStore(config.state_dir / DATABASE)
        self._changed = threading.Condition()
        self._jobs: dict[str, _Job] = {}
        self._watchers = 0
        self._watchers_stopped = False
        self._closing = False
        self._context = multiprocessing.get_context("forkserver")
        self._wake_r, self._wake_w = multiprocessing.Pipe(duplex=False)
        self._thread: threading.Thread | None = None
        self._recover()

    # ------------------------------------------------------------ public

    def start(self) -> None:
        """Start running queued jobs."""
        # Job processes fork from a server that has imported the build code once.
        self._context.set_forkserver_preload([_job_worker.__name__])
        self._thread = threading.Thread(target=self._dispatch, name="data_node-jobs", daemon=True)
        self._thread.start()

    def submit(self, request: jobs_pb2.SubmitBuildJobRequest) -> jobs_pb2.Job:
        """Check ``request`` and queue the job.

        Raises:
            PathOutsideRootError, DatasetNotFoundError, RequestError: See
                :func:`parse_build_request`; also RequestError when a queued or running job
                writes the same (or a nested) output.
            LimitExceededError: ``max_queued_jobs`` jobs are waiting already.
            NodeStoppingError: The node is stopping.
        """
        plan = parse_build_request(request, self._config, self._registry)
        with self._changed:
            if self._closing:
                raise NodeStoppingError(
                    "The node is stopping; submit the job again once it is back."
                )
            for other in self._jobs.values():
                if (
                    other.plan is not None
                    and not other.ended
                    and _overlap(other.plan.output, plan.output)
                ):
                    raise RequestError(
                        f"output: Expected a name no queued or running job writes in. Job "
                        f"{other.job_id} writes {other.request.output!r}; got {request.output!r}."
                    )
            queued = sum(job.state == QUEUED for job in self._jobs.values())
            if queued >= self._limits.max_queued_jobs:
                raise LimitExceededError(
                    f"max_queued_jobs: the node queues at most {self._limits.max_queued_jobs} "
                    "jobs (each waits for "
                    f"one of max_concurrent_jobs={self._limits.max_concurrent_jobs} slots); "
                    "retry later or raise the limit."
                )
            job = _Job(uuid.uuid4().hex, plan.request, QUEUED, time.time(), plan=plan)
            if isinstance(plan.spec, ImportSpec):
                job.classes = {i: [0, 0, 0] for i in range(len(plan.spec.cases))}
            self._store.insert(job.record())
            self._jobs[job.job_id] = job
            message = job.message(time.time())
        logger.info("job %s queued: output %r", job.job_id, request.output)
        self._wake()
        return message

    def get(self, job_id: str) -> jobs_pb2.Job:
        """The job now.

        Raises:
            JobNotFoundError: No such job.
        """
        with self._changed:
            return self._lookup(job_id).message(time.time())

    def list(self) -> list[jobs_pb2.Job]:
        """Every job, in submission order."""
        with self._changed:
            now = time.time()
            return [job.message(now) for job in self._jobs.values()]

    def count_by_state(self) -> dict[str, int]:
        """The number of jobs in each state now, by name: QUEUED, RUNNING, SUCCEEDED, ..."""
        counts = dict.fromkeys(map(_state_name, (QUEUED, RUNNING, *_ENDED)), 0)
        with self._changed:
            for job in self._jobs.values():
                counts[_state_name(job.state)] += 1
        return counts

    def cancel(self, job_id: str) -> jobs_pb2.Job:
        """Cancel a queued or running job and return it once its process is gone.

        A running job's process gets SIGTERM, and SIGKILL if it is still there after
        ``CANCEL_GRACE`` seconds. Cancelling an ended job changes nothing.

        Raises:
            JobNotFoundError: No such job.
        """
        with self._changed:
            job = self._lookup(job_id)
            if job.state == QUEUED:
                self._finish(job, CANCELLED)
            elif job.state == RUNNING:
                job.cancel_requested = True
                self._signal(job, signal.SIGTERM)
                if not self._changed.wait_for(lambda: job.ended, CANCEL_GRACE):
                    self._signal(job, signal.SIGKILL)
                    self._changed.wait_for(lambda: job.ended, CANCEL_GRACE)
            return job.message(time.time())

    def watch(self, job_id: str, stop: threading.Event) -> Iterator[jobs_pb2.Job]:
        """The job now, then each time it changes, until it ends or ``stop`` is set.

        Raises:
            JobNotFoundError: No such job (at the first ``next``).
            LimitExceededError: ``max_watchers`` watches are open already.
            NodeStoppingError: The node is stopping before the job ended.
        """
        with self._changed:
            job = self._lookup(job_id)
            if self._watchers >= self._limits.max_watchers:
                raise LimitExceededError(
                    f"max_watchers: the node serves at most {self._limits.max_watchers} job "
                    "watches at once (each holds a thread); poll GetJob or retry later."
                )
            self._watchers += 1
        try:
            seen = -1
            while True:
                with self._changed:
                    while job.version == seen and not stop.is_set() and not self._watchers_stopped:
                        # The timeout lets a cancelled call (stop) end the wait.
                        self._changed.wait(0.25)
                    if stop.is_set():
                        return
                    if job.version == seen:
                        raise NodeStoppingError(
                            "The node is stopping; watch the job again once it is back."
                        )
                    seen = job.version
                    message, ended = job.message(time.time()), job.ended
                yield message
                if ended:
                    return
        finally:
            with self._changed:
                self._watchers -= 1

    def stop_watchers(self) -> None:
        """End every open watch (with NodeStoppingError); the first step of stopping."""
        with self._changed:
            self._watchers_stopped = True
            self._changed.notify_all()

    def close(self) -> None:
        """Stop: end watches, stop the dispatcher, fail running jobs as interrupted; idempotent.

        Queued jobs stay queued, to run when the node is back.
        """
        with self._changed:
            if self._closing:
                return
            self._closing = True
        self.stop_watchers()
        self._wake()
        if self._thread is not None:
            self._thread.join()
        for job in [j for j in self._jobs.values() if j.process is not None]:
            process = job.process
            assert process is not None
            process.terminate()
            process.join(CANCEL_GRACE)
            if process.exitcode is None:
                process.kill()
                process.join()
            with self._changed:
                self._release(job)
                if job.cancel_requested:
                    self._finish(job, CANCELLED)
                else:
                    self._finish(job, FAILED, INTERRUPTED)
        self._store.close()
        self._wake_r.close()
        self._wake_w.close()

    # ------------------------------------------------------------ dispatcher

    def _dispatch(self) -> None:
        while True:
            with self._changed:
                if self._closing:
                    return
                self._start_queued()
                handles: dict[Any, _Job | None] = {self._wake_r: None}
                for job in self._jobs.values():
                    if job.process is not None:
                        handles[job.process.sentinel] = job
                        if job.conn is not None:
                            handles[job.conn] = job
            ready = mp_connection.wait(list(handles), timeout=1.0)
            # Messages first, so that a job's last report is applied before it is reaped.
            for handle in sorted(ready, key=lambda h: isinstance(h, int)):
                owner = handles[handle]
                try:
                    if owner is None:
                        self._drain_wake()
                    elif isinstance(handle, int):
                        self._reap(owner)
                    else:
                        self._receive(owner)
                except Exception:  # one job's trouble must not stop the dispatcher
                    logger.exception("job dispatcher: handling %s failed", owner)
                    if owner is not None:
                        self._fail_unfinished(owner)

    def _fail_unfinished(self, job: _Job) -> None:
        """Fail a job whose process is gone but whose end could not be recorded."""
        with self._changed:
            if job.process is None and not job.ended:
                job.state, job.ended_at = FAILED, time.time()
                job.error = "the node failed to record the job's end; see its log"
                self._changed.notify_all()

    def _start_queued(self) -> None:
        running = sum(job.state == RUNNING for job in self._jobs.values())
        for job in self._jobs.values():
            if running >= self._limits.max_concurrent_jobs:
                return
            if job.state == QUEUED and job.plan is not None:
                self._launch(job, job.plan)
                running += job.state == RUNNING

    def _launch(self, job: _Job, plan: BuildPlan) -> None:
        staging = self._staging_root / job.job_id
        receiver, sender = self._context.Pipe(duplex=False)
        try:
            _remove(staging)
            staging.mkdir(parents=True)
            process = self._context.Process(
                target=_job_worker.run,
                args=(plan.spec, str(staging), sender),
                name=f"data_node-job-{job.job_id[:8]}",
                daemon=True,
            )
            process.start()
        except Exception as error:  # noqa: BLE001 - pickling a spec can raise anything
            receiver.close()
            self._finish(job, FAILED, f"the job could not start: {_job_worker.error_text(error)}")
            return
        finally:
            sender.close()
        job.process, job.conn = process, receiver
        job.state, job.started_at = RUNNING, time.time()
        self._changed_job(job, persist=True)
        logger.info("job %s running (pid %s)", job.job_id, process.pid)

    def _receive(self, job: _Job) -> None:
        with self._changed:
            try:
                while job.conn is not None and job.conn.poll():
                    kind, payload = job.conn.recv()
                    self._apply(job, kind, payload)
            except (EOFError, OSError):  # the process is gone; its sentinel reports that
                if job.conn is not None:
                    job.conn.close()
                job.conn = None

    def _apply(self, job: _Job, kind: str, payload: Any) -> None:
        if kind == "plan":
            job.classes = {value: [0, p.patches, p.bytes] for value, p in payload.items()}
        elif kind == "case":
            job.classes[payload.index] = [1, payload.slices, payload.kept]
        elif kind == "progress":
            for value, written in payload.items():
                job.classes[value][0] = written
        elif kind == "done":
            job.result = payload
        else:
            job.error = payload
        self._changed_job(job, persist=kind in ("plan", "case"))

    def _reap(self, job: _Job) -> None:
        self._receive(job)
        with self._changed:
            process = job.process
            assert process is not None
            process.join()
            exitcode = process.exitcode
            self._release(job)
            if job.cancel_requested:
                self._finish(job, CANCELLED)
            elif job.result is not None and exitcode == 0:
                self._publish(job)
            else:
                self._finish(job, FAILED, job.error or _died(exitcode))

    def _release(self, job: _Job) -> None:
        if job.conn is not None:
            job.conn.close()
        if job.process is not None:
            job.process.close()
        job.process = job.conn = None

    def _publish(self, job: _Job) -> None:
        plan = job.plan
        assert plan is not None
        assert job.result is not None
        staging = self._staging_root / job.job_id
        is_done = is_import_complete if job.is_import else is_dataset_complete
        if not is_done(staging, plan.spec.file_format):
            self._finish(job, FAILED, "the job's output is not marked complete")
            return
        try:
            _install(staging, plan.output, overwrite=plan.overwrite)
        except OSError as error:
            self._finish(job, FAILED, f"output: could not publish the result: {error}")
            return
        if not job.is_import:
            job.classes = {v: [n, n, job.classes[v][2]] for v, n in job.result.items()}
        if plan.register_as:
            try:
                self._serve(plan.register_as, job)
            except (ConfigError, DatasetExistsError, OSError) as error:
                _remove(plan.output)
                self._finish(job, FAILED, f"register_as: could not serve the result: {error}")
                return
        self._finish(job, SUCCEEDED)

    def _serve(self, name: str, job: _Job) -> None:
        output = resolve_inside(self._config.output_root, job.request.output, field_name="output")
        file_format = job.request.file_format
        if job.is_import:
            config = import_dataset_config(name, output, file_format)
        else:
            config = patch_dataset_config(
                name, output, file_format, tuple(job.classes), masks=job.request.store_masks
            )
        self._registry.register(config, replace=True)

    def _finish(self, job: _Job, state: jobs_pb2.JobState, error: str = "") -> None:
        job.state, job.error, job.ended_at = state, error, time.time()
        if state != SUCCEEDED:
            _remove(self._staging_root / job.job_id)
        self._changed_job(job, persist=True)
        logger.info(
            "job %s %s%s", job.job_id, _state_name(state).lower(), f": {error}" if error else ""
        )

    def _changed_job(self, job: _Job, *, persist: bool) -> None:
        job.version += 1
        if persist:
            self._store.update(job.record())
        self._changed.notify_all()

    def _signal(self, job: _Job, signum: int) -> None:
        if job.process is not None and job.process.exitcode is None:
            if signum == signal.SIGKILL:
                job.process.kill()
            else:
                job.process.terminate()

    def _lookup(self, job_id: str) -> _Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFoundError(
                f"job_id: Expected the id of a job of this node. Got {job_id!r} instead."
            )
        return job

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # closed: the manager is closed
            self._wake_w.send_bytes(b"")

    def _drain_wake(self) -> None:
        while self._wake_r.poll():
            self._wake_r.recv_bytes()

    # ------------------------------------------------------------ recovery

    def _recover(self) -> None:
        """Load the jobs of earlier runs: fail the interrupted, requeue the queued.

        The datasets of succeeded jobs with register_as are the registry's to serve again.
        """
        with self._changed:
            self._recover_locked()

    def _recover_locked(self) -> None:
        for record in self._store.load():
            job = _Job.from_record(record)
            self._jobs[job.job_id] = job
            if job.state == RUNNING:
                job.state, job.error, job.ended_at = FAILED, INTERRUPTED, time.time()
                self._store.update(job.record())
        # Nothing runs yet: whatever is in the staging root is debris of an earlier run.
        _remove(self._staging_root)
        for job in [j for j in self._jobs.values() if j.state == QUEUED]:
            try:
                job.plan = parse_build_request(job.request, self._config, self._registry)
            except DataNodeError as error:
                self._finish(job, FAILED, f"could not be resumed after a restart: {error}")


def _state_name(state: jobs_pb2.JobState) -> str:
    """ "QUEUED", "RUNNING", ...: the JobState name without its prefix."""
    return jobs_pb2.JobState.Name(state).removeprefix(_STATE_PREFIX)


def _case_names(request: jobs_pb2.SubmitBuildJobRequest) -> list[str]:
    """The name of each case of an import request, as import_cases names it."""
    return [
        default_case_name(Case(case.image.path, name=case.name or None), i)
        for i, case in enumerate(request.import_cases.cases)
    ]


def _overlap(a: Path, b: Path) -> bool:
    return a.is_relative_to(b) or b.is_relative_to(a)


def _died(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"the job's process died from signal {signal.Signals(-exitcode).name}"
    return f"the job's process exited with code {exitcode} without a result"


def _install(staging: Path, output: Path, *, overwrite: bool) -> None:
    """Rename ``staging`` to ``output``, replacing an existing one only with ``overwrite``.

    Raises:
        OSError: ``output`` exists without ``overwrite``, or a rename failed (an output
            moved aside is put back).
    """
    old = staging.with_name(staging.name + ".old")
    replacing = output.exists() or output.is_symlink()
    if replacing:
        if not overwrite:
            raise FileExistsError(f"{str(output)!r} appeared while the job ran")
        output.rename(old)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        staging.rename(output)
    except OSError:
        if replacing:
            old.rename(output)
        raise
    _remove(old)


def _remove(path: Path) -> None:
    """Delete a file, link or directory tree if it exists; cleanup never raises."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()
