"""DataNodeClient: list and describe a data node's datasets, stream minibatches, build datasets.

The client is a façade over modules by concern: _channel (channels, TLS, keepalive), _node
(the calls of each node, from data_wire.methods), _requests (arguments -> request messages),
_batch_stream (streams that resume and fail over), _dataset_info (what a node describes).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Self

import grpc

from data_client._args import parse_int, parse_name, parse_option, parse_positive_float
from data_client._batch_stream import BatchStream, open_stream, with_resume
from data_client._channel import (
    DEFAULT_MAX_MESSAGE_BYTES,
    TlsConfig,
    TlsOption,
    channel_credentials,
    channel_options,
    open_channel,
)
from data_client._dataset_info import ArrayInfo, DatasetInfo, dataset_info
from data_client._node import Node
from data_client._requests import (
    CODECS,
    SEED_LIMIT,
    ArrayInput,
    ArraySources,
    CaseSelection,
    build_array_input,
    build_augmentation,
    build_case_input,
    build_cases,
    build_sample_weights,
    build_shard,
    parse_cursor,
    parse_sharing,
    set_output_fields,
    warn_on_image_slice_axis,
)
from data_client.errors import UnavailableError, translate_rpc_error
from data_client.jobs import BuildJob, CaseInput, FileArray, JobInfo, job_info
from data_client.nodes import parse_addresses
from data_wire.v1 import jobs_pb2
from data_wire.v1.data_node_pb2 import (
    DescribeDatasetRequest,
    ListDatasetsRequest,
    RegisterDatasetRequest,
    RemoveDatasetRequest,
    StreamRequest,
)

if TYPE_CHECKING:
    import os
    from types import TracebackType

    import numpy.typing as npt

    from data_client.merge import MultiNodeStream
    from data_client.preview import Preview
    from data_wire.v1.tensor_pb2 import Cursor

__all__ = [
    "SEED_LIMIT",
    "ArrayInfo",
    "ArrayInput",
    "ArraySources",
    "BatchStream",
    "CaseSelection",
    "DataNodeClient",
    "DatasetInfo",
    "TlsConfig",
    "TlsOption",
]


class DataNodeClient:
    """A connection to one data node, or to several serving the same datasets.

    Every RPC sends ``authorization: Bearer <token>`` metadata when a token is given, and every
    failure is raised as a ``data_client.errors.DataNodeError`` subclass (never a raw
    ``grpc.RpcError``). Use as a context manager or call ``close()``.

    Several nodes (a list of addresses, or ``resolve_nodes(name)`` for every address of a
    headless Kubernetes service) share the work of each stream: ``stream()`` reads one lane
    of the epoch from each node in parallel and merges them back into the very stream one
    node would give (a ``MultiNodeStream``), moving a lane to another node if its node goes
    away. The other calls go to the first node that answers, in the order given.

    While a call is open the client sends an HTTP/2 keepalive ping every ``keepalive``
    seconds (default 10), so a node that hangs rather than going away (stopped process,
    frozen VM, a network path silently dropping packets) is noticed within about
    ``keepalive + min(keepalive, 5)`` seconds: its call fails with UNAVAILABLE, and a stream
    fails over to another node or reconnects, as when a node restarts.

    Example:
        >>> with DataNodeClient("localhost:50051") as client:  # doctest: +SKIP
        ...     for image, mask in client.stream("brains", batch_size=32, sample_random=True, seed=1):
        ...         train_step(image, mask)
        >>> nodes = ["node-a:50051", "node-b:50051"]
        >>> with DataNodeClient(nodes) as client:  # doctest: +SKIP
        ...     stream = client.stream("brains", batch_size=32, sample_random=True, seed=1)
        ...     for image, mask in stream:  # the same batches as from one node, in order
        ...         train_step(image, mask)
        ...     print(f"waited {stream.stall:.1f} s for data")
    """

    def __init__(
        self,
        address: str | Sequence[str],
        token: str | None = None,
        tls: TlsOption = None,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        timeout: float | None = 30.0,
        keepalive: float | None = 10.0,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        """Open a channel to each node (connecting lazily, at the first call).

        Args:
            address: The node's ``host:port`` (``[ipv6]:port``), or a sequence of
                distinct addresses of nodes serving the same datasets under the same names
                (e.g. ``resolve_nodes("data-node.ns.svc.cluster.local:50051")``). The order
                matters only for the calls other than ``stream()``: they go to the first node
                that answers.
            token: Bearer token sent with every call. Default None: no authorization metadata.
            tls: Transport security. None or False (default): plaintext. True: TLS verified with
                gRPC's bundled root certificates. A ``str`` or ``os.PathLike``: path to a PEM CA
                bundle the node's certificate must chain to (read now). ``bytes``: the contents
                of such a bundle. A ``TlsConfig``: a CA bundle and, for a node requiring
                mutual TLS, the client's certificate and key. A ``grpc.ChannelCredentials``:
                used as is. The same for every node.
            max_message_bytes: Largest message sent or received, in bytes (one Batch is one
                message). Default 512 MiB, the node's default limit; keep both ends equal.
            timeout: Seconds allowed to each unary call (``datasets()``, ``describe()``, the
                job calls); None waits forever. Default 30. Streams and job watches have no
                deadline (``BuildJob.wait`` takes its own).
            keepalive: Seconds between HTTP/2 keepalive pings while a call is open, >= 1;
                a node that does not acknowledge one within ``min(keepalive, 5)`` seconds
                (hung process, frozen VM, a network path silently dropping packets) fails
                the call with UNAVAILABLE, which a stream treats as any other: it fails
                over or reconnects. None turns the pings off, leaving such a stream blocked
                until the operating system gives up on the connection (often never).
                Default 10: a hung node is noticed within about 15 s. The node accepts
                pings this often; a proxy in between may not.
            options: Further gRPC channel options as (key, value) pairs; they override ours
                (e.g. ``grpc.keepalive_timeout_ms`` with ``grpc.http2.ping_timeout_ms``).

        Raises:
            TypeError: ``address`` is neither a string nor a sequence of strings, or ``tls``
                has none of the accepted forms.
            ValueError: ``address`` names no port (gRPC would dial 443), is an empty sequence
                or repeats an address,
                ``max_message_bytes`` is not a positive int, or ``keepalive`` is not None
                or a number of seconds in [1, 2147483] (TypeError if not a number).
            OSError: ``tls`` names a PEM file that cannot be read.
        """
        addresses = parse_addresses(address)
        options = channel_options(max_message_bytes, keepalive, options)
        credentials = channel_credentials(tls)
        self._metadata: tuple[tuple[str, str], ...] = (
            () if token is None else (("authorization", f"Bearer {token}"),)
        )
        self._timeout = timeout
        self._nodes = tuple(
            Node(
                node_address,
                open_channel(node_address, credentials, options),
                self._metadata,
                timeout,
            )
            for node_address in addresses
        )
        self._channel = self._nodes[0].channel
        self._streams: weakref.WeakSet[BatchStream | MultiNodeStream] = weakref.WeakSet()

    @property
    def addresses(self) -> tuple[str, ...]:
        """The nodes' addresses, in the order given."""
        return tuple(node.address for node in self._nodes)

    @property
    def channel(self) -> grpc.Channel:
        """The first node's gRPC channel, for other services (e.g. ``grpc.health.v1.Health``).

        It carries the client's TLS settings; calls on it send no token unless given one.
        """
        return self._channel

    def datasets(self) -> list[DatasetInfo]:
        """Every dataset the (first answering) node serves, sorted by name.

        Raises:
            DataNodeError: The call failed (a subclass per status code, e.g. UnavailableError
                when no node answers).
        """
        response, _ = self._call("ListDatasets", ListDatasetsRequest())
        return [dataset_info(description) for description in response.datasets]

    def describe(self, dataset: str) -> DatasetInfo:
        """One dataset's arrays (names, dtypes, shapes), length and classes.

        Args:
            dataset: Dataset name as configured on the node.

        Raises:
            NotFoundError: The node does not serve ``dataset`` (also a ``LookupError``).
            DataNodeError: Any other failure (a subclass per status code).
        """
        description, _ = self._call("DescribeDataset", DescribeDatasetRequest(dataset=dataset))
        return dataset_info(description)

    def register_dataset(
        self,
        dataset: str,
        arrays: Mapping[str, ArraySources],
        *,
        class_list: Sequence[int] | None = None,
        maxlen: int | None = None,
        replace: bool = False,
    ) -> DatasetInfo:
        """Serve files under the node's data root as a dataset, at once and after restarts.

        The arguments are those of a ``[datasets.NAME]`` table of the node's config file.
        Needs a token with the "build" role on a node with ``[auth]``.

        Args:
            dataset: The dataset's name: 1 to 128 letters, digits and "._-", starting with a
                letter or digit; not one of the node's config-file datasets.
            arrays: Array name -> its sources (see ``ArraySources``), iterated in tandem in
                this order. A source's format comes from its suffix (.h5/.hdf5, .zarr,
                .bcolz); HDF5 sources need a key.
            class_list: One class per source; adds a "label" array. Default None.
            maxlen: At most this many samples per source, >= 1. Default None: all.
            replace: Replace a dataset registered under ``dataset`` (its open streams end with
                FailedPreconditionError). Default False: AlreadyExistsError.

        Returns:
            The registered dataset's description.

        Raises:
            TypeError, ValueError: An argument is invalid here; the message names it.
            InvalidArgumentError: The node refused a field (named in the details), e.g. a
                source that does not exist or arrays of different lengths.
            AlreadyExistsError: ``dataset`` is served already (see ``replace``).
            PermissionDeniedError: A path leads outside the data root, or the token's role
                is "read".
        """
        if not isinstance(arrays, Mapping) or not arrays:
            raise TypeError(
                f"Expected arrays to be a non-empty dict of array name -> sources. Got {arrays!r} instead."
            )
        request = RegisterDatasetRequest(
            dataset=parse_name("dataset", dataset), replace=bool(replace)
        )
        for array_name, sources in arrays.items():
            array = request.arrays.add(name=parse_name("arrays key", array_name))
            listed = [sources] if isinstance(sources, str | FileArray) else list(sources)
            for i, source in enumerate(listed):
                if isinstance(source, str):
                    source = FileArray(source)
                if not isinstance(source, FileArray):
                    raise TypeError(
                        f"Expected arrays[{array_name!r}][{i}] to be a FileArray or a path. "
                        f"Got {source!r} instead."
                    )
                array.sources.add(path=source.path, key=source.key)
        request.class_list.extend(
            parse_int(f"class_list[{i}]", v, minimum=-(2**63))
            for i, v in enumerate(class_list or ())
        )
        if maxlen is not None:
            request.maxlen = parse_int("maxlen", maxlen, minimum=1)
        description, _ = self._call("RegisterDataset", request)
        return dataset_info(description)

    def remove_dataset(self, dataset: str) -> DatasetInfo | None:
        """Stop serving a registered dataset and forget it across restarts; its files stay.

        Its open streams end with FailedPreconditionError before their next batch. Needs a
        token with the "build" role on a node with ``[auth]``.

        Returns:
            What the node served under ``dataset``, or None when it was registered but not
            served (its files could not be opened when the node started).

        Raises:
            NotFoundError: No dataset of that name is registered.
            FailedPreconditionError: ``dataset`` comes from the node's config file.
        """
        response, _ = self._call(
            "RemoveDataset", RemoveDatasetRequest(dataset=parse_name("dataset", dataset))
        )
        return dataset_info(response.removed) if response.HasField("removed") else None

    def stream(
        self,
        dataset: str,
        batch_size: int,
        sample_random: bool = False,
        seed: int | None = None,
        epochs: int = 1,
        augmentation: Mapping[str, Any] | None = None,
        preprocessor: str | None = None,
        rank: int = 0,
        world_size: int = 1,
        *,
        sharing: str | None = None,
        sample_with_replacement: bool = False,
        sample_weights: Sequence[float] | npt.ArrayLike | str | None = None,
        drop_incomplete_batches: bool = False,
        loop_forever: bool = False,
        nb_io_workers: int = 0,
        nb_proc_workers: int = 0,
        codec: str = "none",
        resume: Cursor | bytes | None = None,
        copy: bool = False,
        max_reconnects: int = 20,
        initial_backoff: float = 0.1,
        max_backoff: float = 2.0,
        cases: CaseSelection | None = None,
        start_epoch: int = 0,
        shuffle_window: int | None = None,
    ) -> BatchStream | MultiNodeStream:
        """Stream minibatches of a dataset (the call starts at the first ``next()``).

        The node is the authority on every argument; the obvious checks are repeated here so
        that a mistake fails before any network traffic.

        With K > 1 nodes the trainer's part of each epoch is split into K lanes (batch index
        ``b`` in lane ``b % K``), lane k read from node k, and merged back in order: the same
        batches, cursors and indices as from one node, bit for bit. A node that goes away
        has its lane moved to the next node, resumed from the lane's last cursor. Without a
        ``seed`` (and ``resume``) the client draws one for all lanes, as they must agree.

        Args:
            dataset: Dataset name.
            batch_size: Samples per batch, >= 1 (and within the node's limit).
            sample_random: Visit samples in random order. Default False.
            seed: Seed of sample order and augmentation, in [0, 2**32). Default None: the node
                draws one (it is in every cursor, and a resume reuses it).
            epochs: Number of epochs, >= 1; counted from the start of the stream, also when
                resuming. Ignored when ``loop_forever``. Default 1.
            augmentation: Per-sample augmentation on the node: the keyword arguments of
                ``data_tools.data_augmentation.image_random_transform`` (rotation_range,
                width_shift_range, height_shift_range, shear_range, zoom_range (a float z for
                [1-z, 1+z] or a (lo, hi) pair), intensity_shift_range, fill_mode, cval_x,
                cval_y, horizontal_flip, vertical_flip, spline_warp, warp_sigma,
                warp_grid_size, crop_size (an (h, w) pair), order_x, order_y), plus
                ``x_array`` (required) and ``y_array``: the names of the arrays transformed as
                x and y. A value of None leaves that field at the node's default. Default None.
            preprocessor: Name of a preprocessor registered in the node's config. Default None.
            rank: This trainer's shard, 0 <= rank < world_size. Default 0.
            world_size: Number of trainers sharing each epoch, >= 1. Default 1.
            sharing: "partitioned": the ``world_size`` ranks of one data-parallel job get
                disjoint parts of every epoch whose union is the epoch (every rank must pass
                the same ``seed``). "independent": this trainer gets whole epochs in the order
                of its own seed (``world_size`` must be 1). Default None: "partitioned" when
                ``world_size > 1``, else "independent".
            sample_with_replacement: Random sampling with replacement. Default False.
            sample_weights: Relative sampling weights: one float per sample (a sequence or 1-D
                array) or the name of a dataset array holding them. Default None.
            drop_incomplete_batches: Drop each epoch's last batch if smaller. Default False.
            loop_forever: Stream until closed. Default False.
            nb_io_workers: Reader threads on the node; 0 (default) means the node's default.
            nb_proc_workers: At most this many of the node's warm worker processes run the
                stream's ``augmentation`` or ``preprocessor`` (which never run in the node's
                own process), >= 0. Default 0: no cap but the node's limits, the pool shared
                fairly with other streams.
            codec: Tensor encoding on the wire: "none" (default), "lz4" or "zstd".
            resume: Continue a stream from a cursor (``BatchStream.cursor`` or its
                ``cursor_bytes()``); the other arguments must match the original stream's.
                Default None: start from the beginning.
            copy: Yield writable arrays owning their memory instead of read-only views of the
                received message (costs one copy per array). Default False.
            max_reconnects: Reconnect attempts after UNAVAILABLE without a batch in between,
                >= 0; 0 raises at the first UNAVAILABLE. Default 20: with the default backoff,
                a node may stay unreachable for about 25 s (16 to 33 s) before UnavailableError.
                With several nodes it counts rounds instead: an UNAVAILABLE node is left for
                the next one at once, and only once every node has failed in a row does the
                stream back off; so all nodes may stay unreachable as long before it gives up.
            initial_backoff: Seconds before the first reconnect, > 0; each further attempt
                waits twice as long, up to ``max_backoff`` (with jitter: between half and all
                of it). Default 0.1.
            max_backoff: Upper bound of one wait, in seconds, > 0. It also bounds how long a
                stream lags behind a node that came back. Default 2.
            cases: Only the samples of these cases (by the dataset's "case" array; see
                ``CaseSelection``): every epoch is drawn from them alone, with the same
                shards, determinism and resume as a whole dataset, e.g. ``"0-79"`` to train
                and ``"80-99"`` to validate. Part of the stream's identity: a cursor resumes
                only the same selection. Default None: every sample.
            start_epoch: Start at batch 0 of this epoch, < ``epochs`` (what a cursor at
                that point resumes; with the same seed, the batches a trainer gets in that
                epoch). Not with ``resume``. Default 0.
            shuffle_window: With ``sample_random``, a chunk-windowed shuffle of windows of about
                this many samples, >= 1, instead of one exact permutation per epoch: the
                node permutes the dataset's storage chunks, cuts them into windows and
                shuffles within each window, so it decodes each chunk about once per epoch
                in bounded memory, at the price of a weaker shuffle (samples of one chunk stay
                within about a window of each other). Every sample still comes once per
                epoch; resume and shards work as without it. Not with replacement or
                weights; part of the stream's identity (a cursor resumes only the same
                window). Default None: the exact permutation.

        Returns:
            A ``BatchStream`` (one node) or ``MultiNodeStream`` (several), yielding tuples of
            numpy arrays in the dataset's array order. Both have ``cursor``,
            ``cursor_bytes()``, ``indices``, ``epoch``, ``batch_index``, ``stall``,
            ``stall_fraction`` and ``close()``.

        Raises:
            TypeError, ValueError: An argument is invalid here; the message names it.
            DataNodeError: From iterating the stream: the node refused the request (e.g.
                NotFoundError, InvalidArgumentError, ResourceExhaustedError) or stayed
                unreachable (UnavailableError).
        """
        request = StreamRequest(
            dataset=parse_name("dataset", dataset),
            batch_size=parse_int("batch_size", batch_size, minimum=1),
            sample_random=bool(sample_random),
            sample_with_replacement=bool(sample_with_replacement),
            drop_incomplete_batches=bool(drop_incomplete_batches),
            epochs=parse_int("epochs", epochs, minimum=1),
            loop_forever=bool(loop_forever),
            nb_io_workers=parse_int("nb_io_workers", nb_io_workers, minimum=0),
            nb_proc_workers=parse_int("nb_proc_workers", nb_proc_workers, minimum=0),
            shard=build_shard(rank, world_size),
            sharing=parse_sharing(sharing, world_size),
            preprocessor="" if preprocessor is None else parse_name("preprocessor", preprocessor),
            codec=CODECS[parse_option("codec", codec, CODECS)],
        )
        if seed is not None:
            request.seed = parse_int("seed", seed, minimum=0, maximum=SEED_LIMIT - 1)
        if sample_weights is not None:
            request.sample_weights.CopyFrom(build_sample_weights(sample_weights))
        if augmentation is not None:
            request.augmentation.CopyFrom(build_augmentation(augmentation))
        if cases is not None:
            request.cases.extend(build_cases(cases))
        request.start_epoch = parse_int("start_epoch", start_epoch, minimum=0)
        if shuffle_window is not None:
            request.shuffle_window = parse_int("shuffle_window", shuffle_window, minimum=1)
        stream = open_stream(
            [node.calls["StreamBatches"] for node in self._nodes],
            with_resume(request, parse_cursor(resume)),
            metadata=self._metadata,
            max_reconnects=parse_int("max_reconnects", max_reconnects, minimum=0),
            initial_backoff=parse_positive_float("initial_backoff", initial_backoff),
            max_backoff=parse_positive_float("max_backoff", max_backoff),
            copy=copy,
        )
        self._streams.add(stream)
        return stream

    def preview(
        self,
        dataset: str,
        path: str | os.PathLike[str],
        num_samples: int = 8,
        *,
        sample_random: bool = False,
        seed: int | None = None,
        epoch: int = 0,
        augmentation: Mapping[str, Any] | None = None,
        cases: CaseSelection | None = None,
        sample_with_replacement: bool = False,
        sample_weights: Sequence[float] | npt.ArrayLike | str | None = None,
        image_array: str | None = None,
        mask_array: str | None = None,
        columns: int = 4,
        scale: int | None = None,
    ) -> Preview:
        """Write a PNG grid of samples as a trainer streams them, each beside its original.

        The first ``num_samples`` samples of epoch ``epoch`` of the stream that ``stream()``
        opens with the same arguments, each shown as its original (the same sample without
        augmentation) next to its augmented version, the mask drawn over both in colour: a
        glance shows whether image and mask stay aligned and how strong the augmentation
        is. The layout and colours are those of ``data_client.preview``.

        Args:
            dataset: Dataset name.
            path: The PNG file to write (replaced atomically if it exists).
            num_samples: Samples shown, >= 1 (fewer if the epoch holds fewer). Default 8.
            sample_random, seed, augmentation, cases, sample_with_replacement, sample_weights: As for
                ``stream()``; pass the trainer's to see what it gets. Default seed None:
                one is drawn (it is in the result).
            epoch: The epoch shown, >= 0. Default 0.
            image_array: The array shown as the image. Default None: ``augmentation``'s
                ``x_array``, else "image".
            mask_array: The array drawn over it. Default None: ``augmentation``'s ``y_array``,
                else "mask" if the dataset has one, else no overlay.
            columns: Sample pairs per row, >= 1. Default 4.
            scale: Screen pixels per sample pixel, >= 1. Default None: tiles of about 128
                pixels.

        Returns:
            Where the grid went, which samples it shows and where each tile is.

        Raises:
            TypeError, ValueError: An argument is invalid (named), or an array named is not
                the dataset's.
            OSError: ``path`` cannot be written.
            DataNodeError: The node refused the stream (as ``stream()`` would).
        """
        from data_client.preview import preview  # imports this module: not at the top

        return preview(
            self,
            dataset,
            path,
            num_samples,
            sample_random=sample_random,
            seed=seed,
            epoch=epoch,
            augmentation=augmentation,
            cases=cases,
            sample_with_replacement=sample_with_replacement,
            sample_weights=sample_weights,
            image_array=image_array,
            mask_array=mask_array,
            columns=columns,
            scale=scale,
        )

    def submit_build(
        self,
        output: str,
        patchsize: int,
        volume: ArrayInput,
        mask: ArrayInput | None = None,
        class_list: Sequence[int] | None = None,
        random_order: bool = True,
        batchsize: int = 32,
        file_format: str = "hdf5",
        writer_options: Mapping[str, Any] | None = None,
        *,
        max_patches_per_class: int | None = None,
        register_as: str | None = None,
        overwrite: bool = False,
        slice_axis: int = -1,
        seed: int | None = None,
        executor: str | None = None,
        scheduler_address: str | None = None,
        store_masks: bool = False,
    ) -> BuildJob:
        """Submit a patch-dataset build (``data_tools.patches.create_dataset`` on the node).

        The arguments are create_dataset's, with ``output`` for ``save_path`` and
        ``writer_options`` for ``kwargs``. The node checks them all; the obvious checks are
        repeated here.

        Args:
            output: Name of the output directory under the node's output root.
            patchsize: Patch edge in pixels, >= 1 and at most the slices' sides.
            volume: The 2D slice or 3D volume: a ``DatasetArray``, a ``FileArray``, or a path
                (str) under the node's data root.
            mask: Optional array of the volume's shape holding each pixel's class, in the
                same forms. Default None: every pixel is class 0.
            class_list: Mask values to extract. Default None: every value in the mask.
            random_order: Randomize each class's patch order. Default True.
            batchsize: Patches per write and chunk length, >= 1. Default 32.
            file_format: "hdf5" (default), "zarr" or "bcolz".
            writer_options: JSON-serializable writer options (see the proto's
                ``writer_options`` for the keys each format accepts). Default None.
            max_patches_per_class: At most this many patches per class (>= 1): the first
                ones, or a random subset with ``random_order``. Default None: all.
            register_as: Serve the result as a dataset of this name once the job succeeds,
                with arrays "patch" and "label". Default None.
            overwrite: Replace an existing output once the job succeeds. Default False.
            slice_axis: Axis of a 3D volume indexing its slices, in [-3, 2]. Default -1. A
                medical image is a (z, y, x) array: pass 0 for axial slices (a UserWarning
                says so when a medical image is cut along x).
            seed: Seed of the random choices, >= 0. Default None: the node draws one.
            executor: "local" or "dask". Default None: the node's configured executor.
            scheduler_address: The Dask scheduler's address. Default None: the node's.
            store_masks: Also store each patch's mask patch (needs ``mask``); a registered
                result then serves "patch", "mask" and "label". Default False.

        Returns:
            A ``BuildJob`` handle on the queued job.

        Raises:
            TypeError, ValueError: An argument is invalid here; the message names it.
            InvalidArgumentError, PermissionDeniedError, NotFoundError,
            ResourceExhaustedError: The node refused the request; the details name the field.
        """
        request = jobs_pb2.SubmitBuildJobRequest(
            volume=build_array_input("volume", volume),
            patchsize=parse_int("patchsize", patchsize, minimum=1),
            class_list=[
                parse_int(f"class_list[{i}]", v, minimum=-(2**63))
                for i, v in enumerate(class_list or ())
            ],
            random_order=bool(random_order),
            slice_axis=parse_int("slice_axis", slice_axis, minimum=-(2**31)),
            executor="" if executor is None else parse_name("executor", executor),
            scheduler_address=(
                ""
                if scheduler_address is None
                else parse_name("scheduler_address", scheduler_address)
            ),
            store_masks=bool(store_masks),
        )
        set_output_fields(
            request, output, batchsize, file_format, writer_options, register_as, overwrite, seed
        )
        warn_on_image_slice_axis(request)
        if mask is not None:
            request.mask.CopyFrom(build_array_input("mask", mask))
        if max_patches_per_class is not None:
            request.max_patches_per_class = parse_int(
                "max_patches_per_class", max_patches_per_class, minimum=1
            )
        job, node = self._call("SubmitBuildJob", request)
        return BuildJob(job.job_id, node.job_calls)

    def submit_import(
        self,
        output: str,
        cases: Sequence[CaseInput],
        *,
        slice_axis: int | None = None,
        orientation: str | None = None,
        spacing: Sequence[float] | None = None,
        size: Sequence[int] | None = None,
        clip: Sequence[float] | None = None,
        normalize: str | None = None,
        keep_unlabelled: float | None = None,
        label_values: Sequence[int] | None = None,
        file_format: str = "hdf5",
        batchsize: int = 32,
        writer_options: Mapping[str, Any] | None = None,
        register_as: str | None = None,
        overwrite: bool = False,
        seed: int | None = None,
    ) -> BuildJob:
        """Submit an import of medical cases (``data_tools.medical.import_cases`` on the node).

        The node writes one dataset of 2D slices (arrays "image", "mask" with labels,
        "case", "slice") and, with ``register_as``, serves it once the job succeeds. The
        options are import_cases'; the node checks them all.

        Args:
            output: Name of the output directory under the node's output root.
            cases: The cases (``CaseInput``: image, optional label, name), at least one.
            slice_axis: Axis of the (z, y, x) arrays cut into slices. Default None: 0.
            orientation: Reorient every case to this code ("RAS", "LPS", ...). Default
                None: keep each case's.
            spacing: Target in-plane spacing (rows, columns). Default None: keep.
            size: Target slice size (rows, columns). Default None: keep the extent.
            clip: (low, high) intensity clipping. Default None.
            normalize: "none", "zscore", "minmax" or "window". Default None: "none".
            keep_unlabelled: Fraction of slices without labels kept. Default None: 1.
            label_values: The label values cases may hold. Default None: any.
            file_format: "hdf5" (default) or "zarr".
            batchsize: Slices per write and chunk length, >= 1. Default 32.
            writer_options: JSON-serializable writer options. Default None.
            register_as: Serve the result as a dataset of this name. Default None.
            overwrite: Replace an existing output once the job succeeds. Default False.
            seed: Seed of the keep_unlabelled draw, >= 0. Default None: the node draws one.

        Returns:
            A ``BuildJob`` handle on the queued job; its ``status().cases`` show progress.

        Raises:
            TypeError, ValueError: An argument is invalid here; the message names it.
            InvalidArgumentError, PermissionDeniedError, ResourceExhaustedError: The node
                refused the request; the details name the field (and the case).
        """
        if not isinstance(cases, Sequence):
            raise TypeError(f"Expected cases to be a sequence of CaseInput. Got {cases!r}.")
        options = jobs_pb2.ImportCases(
            cases=[build_case_input(i, case) for i, case in enumerate(cases)],
            orientation=orientation or "",
            spacing=list(spacing or ()),
            size=list(size or ()),
            clip=list(clip or ()),
            normalize=normalize or "",
            label_values=list(label_values or ()),
        )
        if slice_axis is not None:
            options.slice_axis = parse_int("slice_axis", slice_axis, minimum=-(2**31))
        if keep_unlabelled is not None:
            options.keep_unlabelled = keep_unlabelled
        request = jobs_pb2.SubmitBuildJobRequest(import_cases=options)
        set_output_fields(
            request, output, batchsize, file_format, writer_options, register_as, overwrite, seed
        )
        job, node = self._call("SubmitBuildJob", request)
        return BuildJob(job.job_id, node.job_calls)

    def job(self, job_id: str) -> BuildJob:
        """A handle on a job submitted earlier (by any client); nothing is called yet.

        A job lives on the node that accepted it; with several nodes this handle asks the
        first one (``addresses[0]``). ``submit_build`` returns a handle on the right node.
        """
        return BuildJob(parse_name("job_id", job_id), self._nodes[0].job_calls)

    def jobs(self) -> list[JobInfo]:
        """Every job the (first answering) node has recorded, in submission order.

        The node answers a page of jobs at a time (ListJobs ``page_token``); this asks for
        every page, from the node that answered the first.
        """
        response, node = self._call("ListJobs", jobs_pb2.ListJobsRequest())
        messages = list(response.jobs)
        while response.next_page_token:
            request = jobs_pb2.ListJobsRequest(page_token=response.next_page_token)
            response = self._call_on(node, "ListJobs", request)
            messages += response.jobs
        return [job_info(message) for message in messages]

    def close(self) -> None:
        """Close every open stream of this client, then the channels; idempotent."""
        for stream in list(self._streams):
            stream.close()
        for node in self._nodes:
            node.channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close the client; after an interruption, in the background.

        An interruption (an exception that is no ``Exception``: Ctrl-C's KeyboardInterrupt,
        SystemExit, a test runner's timeout) may land while gRPC sets up a call, and closing
        the channel would then wait for that call for ever: the caller gets control back.
        """
        if exc is not None and not isinstance(exc, Exception):
            threading.Thread(target=self.close, name="data_client-close", daemon=True).start()
        else:
            self.close()

    def _call(self, rpc: str, request: Any) -> tuple[Any, Node]:
        """The response of unary ``rpc`` from the first node that answers, and that node.

        Raises:
            DataNodeError: The first node that answered refused, or no node answered
                (UnavailableError from the last one).
        """
        for node in self._nodes[:-1]:
            try:
                return self._call_on(node, rpc, request), node
            except UnavailableError:
                continue
        return self._call_on(self._nodes[-1], rpc, request), self._nodes[-1]

    def _call_on(self, node: Node, rpc: str, request: Any) -> Any:
        try:
            return node.calls[rpc](request, timeout=self._timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise translate_rpc_error(error) from error
