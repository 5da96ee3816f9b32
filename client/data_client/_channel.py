"""Channels to data nodes: TLS credentials, message-size, reconnect and keepalive options."""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import grpc
import numpy as np

from data_client._args import parse_int
from data_wire.defaults import DEFAULT_MAX_MESSAGE_BYTES

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "PemSource",
    "TlsConfig",
    "TlsOption",
    "channel_credentials",
    "channel_options",
    "open_channel",
]

PemSource: TypeAlias = str | os.PathLike[str] | bytes
"""A PEM file's path, or its contents."""

# gRPC's own reconnect backoff (1 s growing to 120 s) would keep a channel failing fast long
# after a restarted node is back, wasting every stream reconnect attempt; keep it short.
_CHANNEL_RECONNECT_OPTIONS: Final = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)
# Keepalive bounds, in seconds. The node accepts pings 0.5 s apart (data_node.server), so
# 1 s leaves room for jitter; gRPC takes the interval as a 32-bit count of milliseconds.
_KEEPALIVE_MIN: Final = 1.0
_KEEPALIVE_MAX: Final = (2**31 - 1) // 1000
# Longest wait for a ping's acknowledgement: a hung node is dropped at most this long after
# the ping, while a busy link still gets a few seconds to answer.
_KEEPALIVE_TIMEOUT_MAX: Final = 5.0


@dataclass(frozen=True)
class TlsConfig:
    """A client's TLS settings: whom to trust, and its own certificate for mutual TLS.

    Attributes:
        ca: PEM bundle of the CA(s) the node's certificate must chain to. Default None:
            gRPC's bundled root certificates.
        cert: The client's PEM certificate chain, for a node that requires client
            certificates (``[tls] ca`` in the node's config). Default None: none.
        key: The private key of ``cert`` (PEM); never shown in the repr. Default None.

    Each is a path (``str`` or ``os.PathLike``, read when the client is created) or the
    PEM contents as ``bytes``. The node's certificate must name the host dialled; to dial
    another name pass ``options=[("grpc.ssl_target_name_override", NAME)]`` to the client.

    Raises:
        TypeError: A field has none of these forms.
        ValueError: ``cert`` is given without ``key``, or ``key`` without ``cert``.
    """

    ca: PemSource | None = None
    cert: PemSource | None = None
    key: PemSource | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name in ("ca", "cert", "key"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str | os.PathLike | bytes):
                shown = "a value" if name == "key" else repr(value)
                raise TypeError(
                    f"Expected TlsConfig.{name} to be a PEM path, PEM bytes or None. "
                    f"Got {shown} of type {type(value).__name__} instead."
                )
        if (self.cert is None) != (self.key is None):
            given, missing = ("cert", "key") if self.key is None else ("key", "cert")
            raise ValueError(
                f"Expected TlsConfig.cert and TlsConfig.key together. Got {given} without "
                f"{missing} instead."
            )


TlsOption: TypeAlias = bool | PemSource | TlsConfig | grpc.ChannelCredentials | None
"""Accepted forms of ``DataNodeClient(tls=...)``."""


def channel_options(
    max_message_bytes: Any, keepalive: Any, options: Sequence[tuple[str, Any]]
) -> list[tuple[str, Any]]:
    """A channel's options: message sizes, short reconnects, keepalive, then ``options``.

    Raises:
        TypeError, ValueError: ``max_message_bytes`` is not an int >= 1, or ``keepalive``
            not None or a number of seconds in [1, 2147483].
    """
    max_message_bytes = parse_int("max_message_bytes", max_message_bytes, minimum=1)
    return list(
        dict(
            (
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.max_receive_message_length", max_message_bytes),
                *_CHANNEL_RECONNECT_OPTIONS,
                *_keepalive_options(keepalive),
                *options,
            )
        ).items()
    )


def open_channel(
    address: str, credentials: grpc.ChannelCredentials | None, options: list[tuple[str, Any]]
) -> grpc.Channel:
    """A channel to ``address``: plaintext without ``credentials``, else TLS."""
    if credentials is None:
        return grpc.insecure_channel(address, options)
    return grpc.secure_channel(address, credentials, options)


def _keepalive_options(keepalive: Any) -> tuple[tuple[str, int], ...]:
    """Channel options pinging the node every ``keepalive`` seconds while a call is open."""
    if keepalive is None:
        return ()
    if isinstance(keepalive, bool | np.bool_) or not isinstance(keepalive, numbers.Real):
        raise TypeError(
            f"Expected keepalive to be a number of seconds or None. Got {keepalive!r} instead."
        )
    seconds = float(keepalive)
    if not _KEEPALIVE_MIN <= seconds <= _KEEPALIVE_MAX:
        raise ValueError(
            f"Expected keepalive to be a number of seconds in [{_KEEPALIVE_MIN:g}, "
            f"{_KEEPALIVE_MAX}], or None to turn the pings off. Got {keepalive!r} instead."
        )
    timeout_ms = round(min(seconds, _KEEPALIVE_TIMEOUT_MAX) * 1000)
    return (
        ("grpc.keepalive_time_ms", round(seconds * 1000)),
        ("grpc.keepalive_timeout_ms", timeout_ms),
        # grpcio 1.85 drops the connection only when its general ping timeout (default 60 s)
        # expires, whatever keepalive_timeout_ms says: keep the two equal.
        ("grpc.http2.ping_timeout_ms", timeout_ms),
        # Idle channels stay quiet; unary calls have their own deadline.
        ("grpc.keepalive_permit_without_calls", 0),
        # gRPC stops pinging after 2 pings without data sent (default), and a stream's
        # client sends none after its request: lift the limit or the pings would stop.
        ("grpc.http2.max_pings_without_data", 0),
    )


def channel_credentials(tls: TlsOption) -> grpc.ChannelCredentials | None:
    """The credentials of a ``tls`` option (see ``DataNodeClient``); None: plaintext.

    Raises:
        TypeError: ``tls`` has none of the accepted forms.
        OSError: A PEM file cannot be read.
    """
    if tls is None or tls is False:
        return None
    if tls is True:
        return grpc.ssl_channel_credentials()
    if isinstance(tls, grpc.ChannelCredentials):
        return tls
    if isinstance(tls, str | os.PathLike | bytes):
        tls = TlsConfig(ca=tls)
    if isinstance(tls, TlsConfig):
        return grpc.ssl_channel_credentials(
            root_certificates=_read_pem(tls.ca),
            private_key=_read_pem(tls.key),
            certificate_chain=_read_pem(tls.cert),
        )
    raise TypeError(
        "Expected tls to be None, a bool, a CA bundle path, PEM bytes, a TlsConfig or "
        f"grpc.ChannelCredentials. Got {tls!r} instead."
    )


def _read_pem(source: PemSource | None) -> bytes | None:
    if source is None or isinstance(source, bytes):
        return source
    return Path(source).read_bytes()
