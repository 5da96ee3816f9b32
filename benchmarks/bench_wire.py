"""Wire throughput of ~8 MB batches over loopback gRPC: raw bytes vs naive protobuf vs data_node.wire.

A server process streams batches of a float32 (8, 1, 512, 512) image, a uint8 (8, 1, 64, 64)
mask and 8 indices to this process, with the same channel options on both ends:

(a)  raw ceiling: pre-built bytes of the same size, identity serializers on both ends;
(a') raw bytes of the arrays: ``b"".join(arrays)`` per batch, identity serializers. gRPC Python
     sends only ``bytes``, so this one copy is the least any server streaming arrays pays;
(b)  naive: tobytes, Batch(...).SerializeToString() / Batch.FromString, .data, np.frombuffer;
(c)  ours: data_node.wire.encode_batch / data_client._decode.decode_batch, registered the way
     the node and the client register StreamBatches (identity response serializer on the
     server, decode_batch as the response deserializer on the client).

Throughput is MB/s of array payload received and decoded, in steady state (the first batches of
each stream are not timed). Ratios are medians over interleaved rounds, each measurement divided
by the ceiling measured just before and after it (goal: (c)/(a) >= 0.85). Then CODEC_NONE, LZ4
and Zstd on a compressible payload against the same ceiling, and the CPU time of each step.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import time
from concurrent import futures

import grpc
import numpy as np

from data_client._decode import decode_batch
from data_node.wire import encode_batch
from data_wire.v1 import tensor_pb2

SERVICE = "bench.Wire"
MIB = 1 << 20
OPTIONS = [
    ("grpc.max_send_message_length", 64 * MIB),
    ("grpc.max_receive_message_length", 64 * MIB),
]
BATCH = 8
DISTINCT = 4
ROUNDS = 40
BATCHES_PER_STREAM = 20
UNTIMED = 3
CURSOR = tensor_pb2.Cursor(dataset="bench", seed=1, epoch=0, batch_index=1, fingerprint="f" * 16)


def make_arrays(kind: str, seed: int = 0) -> list[np.ndarray]:
    """A batch: random (incompressible) or smooth, quantized (compressible) image, and a mask."""
    rng = np.random.default_rng(seed)
    shape = (BATCH, 1, 512, 512)
    if kind == "random":
        image = rng.random(shape, dtype=np.float32)
    else:
        y, x = np.meshgrid(np.linspace(0, 6, 512), np.linspace(0, 9, 512), indexing="ij")
        smooth = np.round((np.sin(x + seed) * np.cos(y) + 1) * 32) / 64
        image = np.broadcast_to(smooth, shape).astype(np.float32, order="C")
    mask = (rng.random((BATCH, 1, 64, 64)) > 0.5).astype(np.uint8)
    return [image, mask]


def naive_encode(arrays: list[np.ndarray], batch_index: int) -> tensor_pb2.Batch:
    tensors = [
        tensor_pb2.Tensor(
            dtype=a.dtype.str, shape=a.shape, data=a.tobytes(), raw_nbytes=a.nbytes, codec=1
        )
        for a in arrays
    ]
    return tensor_pb2.Batch(
        arrays=tensors, cursor=CURSOR, indices=range(BATCH), epoch=0, batch_index=batch_index
    )


def naive_decode(buf: bytes) -> list[np.ndarray]:
    batch = tensor_pb2.Batch.FromString(buf)
    return [np.frombuffer(t.data, dtype=t.dtype).reshape(t.shape) for t in batch.arrays]


def ours_encode(arrays: list[np.ndarray], batch_index: int, codec: int) -> bytes:
    return encode_batch(
        arrays, indices=range(BATCH), cursor=CURSOR, epoch=0, batch_index=batch_index, codec=codec
    )


def parse_request(request: bytes) -> tuple[str, int, int]:
    kind, count, codec = request.decode().split()
    return kind, int(count), int(codec)


def serve(conn, stop) -> None:
    """Server process: the streaming methods on a loopback port until ``stop`` is set."""
    # DISTINCT batches of each kind, cycled: like a real stream, no path sends from a buffer
    # that is still in the CPU cache from the previous message.
    batches = {k: [make_arrays(k, seed) for seed in range(DISTINCT)] for k in ("random", "smooth")}
    size = len(ours_encode(batches["random"][0], 0, tensor_pb2.CODEC_NONE))
    raw_payloads = [os.urandom(size) for _ in range(DISTINCT)]

    def raw(request, context):
        _, count, _ = parse_request(request)
        for i in range(count):
            yield raw_payloads[i % DISTINCT]

    def raw_arrays(request, context):
        kind, count, _ = parse_request(request)
        for i in range(count):
            yield b"".join(batches[kind][i % DISTINCT])

    def naive(request, context):
        kind, count, _ = parse_request(request)
        for i in range(count):
            yield naive_encode(batches[kind][i % DISTINCT], i)

    def ours(request, context):
        kind, count, codec = parse_request(request)
        for i in range(count):
            yield ours_encode(batches[kind][i % DISTINCT], i, codec)

    handlers = {
        "Raw": grpc.unary_stream_rpc_method_handler(raw),
        "RawArrays": grpc.unary_stream_rpc_method_handler(raw_arrays),
        "Naive": grpc.unary_stream_rpc_method_handler(
            naive, response_serializer=tensor_pb2.Batch.SerializeToString
        ),
        # As the node registers StreamBatches: the handler yields bytes, passed through.
        "Ours": grpc.unary_stream_rpc_method_handler(ours, response_serializer=None),
    }
    pool = futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="bench-wire")
    server = grpc.server(pool, options=OPTIONS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    conn.send(port)
    stop.wait()
    server.stop(grace=2).wait()
    pool.shutdown()


def stream(channel, method, deserializer, kind, count, codec=0) -> float:
    """Seconds to receive and decode ``count`` batches after the first ``UNTIMED`` of a stream.

    The first batches of a stream pay for the switch from another mode (the server's allocator
    shrinks and grows its heaps); steady-state throughput is what the comparison is about.
    """
    call = channel.unary_stream(f"/{SERVICE}/{method}", response_deserializer=deserializer)
    responses = call(f"{kind} {count + UNTIMED} {codec}".encode())
    for _ in range(UNTIMED):
        next(responses)
    start = time.perf_counter()
    received = sum(1 for _ in responses)
    elapsed = time.perf_counter() - start
    assert received == count, (method, received)
    return elapsed


def best_ms(function, repeat: int = 20) -> float:
    """Best wall time of ``function`` in milliseconds."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def check(channel) -> None:
    """Both protobuf paths deliver the arrays the server sent; ours as aligned views."""
    expected = make_arrays("random")
    for method, deserializer in (("Naive", naive_decode), ("Ours", decode_batch)):
        call = channel.unary_stream(f"/{SERVICE}/{method}", response_deserializer=deserializer)
        (batch,) = call(b"random 1 1")
        arrays = batch.arrays if method == "Ours" else batch
        assert all(np.array_equal(a, b) for a, b in zip(arrays, expected, strict=True))
    # the views decode_batch returns are aligned in the bytes gRPC hands the deserializer
    assert all(a.flags.aligned for a in batch.arrays)


def compare(channel, modes, rounds: int, payload_mb: float) -> dict[str, float]:
    """Measure ``modes`` in interleaved rounds; print rates and ratios to the ceiling (a).

    Each measurement sits between two of the ceiling and is divided by their mean, so that load
    from other processes, which drifts over seconds, weighs on both sides alike.
    """

    def rate(method, deserializer, kind, codec) -> float:
        elapsed = stream(channel, method, deserializer, kind, BATCHES_PER_STREAM, codec)
        return payload_mb * BATCHES_PER_STREAM / elapsed

    ceilings = [rate("Raw", None, "random", 1)]
    rates: dict[str, list[float]] = {name: [] for name in modes}
    ratios: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(rounds):
        for name, mode in modes.items():
            rates[name].append(rate(*mode))
            ceilings.append(rate("Raw", None, "random", 1))
            ratios[name].append(rates[name][-1] * 2 / (ceilings[-2] + ceilings[-1]))
    print(f"{'(a) raw bytes ceiling':34s} {statistics.median(ceilings):6.0f} MB/s")
    for name in modes:
        print(
            f"{name:34s} {statistics.median(rates[name]):6.0f} MB/s  ratio to (a) "
            f"{statistics.median(ratios[name]):.2f} "
            f"(rounds {min(ratios[name]):.2f}..{max(ratios[name]):.2f})"
        )
    return {name: statistics.median(r) for name, r in ratios.items()}


def report(channel, payload_mb: float) -> None:
    """The goal ratio (c)/(a) first, then the naive path and the codecs."""
    print(
        f"payload {payload_mb:.2f} MB per batch, {BATCHES_PER_STREAM} timed batches per stream, "
        "medians over rounds"
    )
    copy_once, ours = "(a') raw bytes of the arrays", "(c) encode_batch/decode_batch"
    headline = {
        copy_once: ("RawArrays", None, "random", 1),
        ours: ("Ours", decode_batch, "random", 1),
    }
    ratios = compare(channel, headline, ROUNDS, payload_mb)
    print("(c)/(a)  ".ljust(34), f"{ratios[ours]:.2f}  (goal >= 0.85)")
    print("(c)/(a') ".ljust(34), f"{ratios[ours] / ratios[copy_once]:.2f}")
    compare(channel, {"(b) naive protobuf": ("Naive", naive_decode, "random", 1)}, 5, payload_mb)
    print("compressible payload (smooth, quantized float32 image + random mask):")
    codecs = {
        f"(c) {tensor_pb2.Codec.Name(codec)}": ("Ours", decode_batch, "smooth", codec)
        for codec in (tensor_pb2.CODEC_NONE, tensor_pb2.CODEC_LZ4, tensor_pb2.CODEC_ZSTD)
    }
    compare(channel, codecs, 5, payload_mb)


def report_cpu() -> None:
    """CPU time per batch of each side, in this process."""
    arrays = make_arrays("random")
    encoded = ours_encode(arrays, 0, tensor_pb2.CODEC_NONE)
    print(
        f"CPU per batch: encode_batch "
        f"{best_ms(lambda: ours_encode(arrays, 0, tensor_pb2.CODEC_NONE)):.2f} ms, "
        f"decode_batch {best_ms(lambda: decode_batch(encoded)):.3f} ms; naive encode "
        f"{best_ms(lambda: naive_encode(arrays, 0).SerializeToString()):.2f} ms, "
        f"naive decode {best_ms(lambda: naive_decode(encoded)):.2f} ms"
    )
    smooth = make_arrays("smooth")
    raw_bytes = sum(a.nbytes for a in smooth)
    for label, codec in (("lz4", tensor_pb2.CODEC_LZ4), ("zstd", tensor_pb2.CODEC_ZSTD)):
        wire = ours_encode(smooth, 0, codec)
        print(
            f"smooth payload {label:4s}: raw/wire size {raw_bytes / len(wire):5.1f}x, "
            f"encode {best_ms(lambda c=codec: ours_encode(smooth, 0, c), 5):.1f} ms, "
            f"decode {best_ms(lambda w=wire: decode_batch(w), 5):.1f} ms per batch"
        )


def main() -> None:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    stop = ctx.Event()
    server = ctx.Process(target=serve, args=(child, stop), name="bench-wire-server")
    server.start()
    try:
        port = parent.recv()
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS) as channel:
            check(channel)
            report(channel, sum(a.nbytes for a in make_arrays("random")) / 1e6)
    finally:
        stop.set()
        server.join(timeout=30)
        if server.is_alive():
            server.terminate()
            server.join()
    report_cpu()


if __name__ == "__main__":
    main()
