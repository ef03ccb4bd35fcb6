"""How a client proves who it is and checks whom it talks to: TLS, a client certificate, a token.

    creds = Credentials(ca_cert="ca.pem", client_cert="me.pem", client_key="me.key", token=os.environ["TOKEN"])
    with CircuitClient("serve.example:50051", credentials=creds) as client: ...

- TLS is used when a CA bundle, a client certificate or `tls=True` is given (`tls=True`
  alone checks the server against the system's root certificates);
- `client_cert` + `client_key` answer a server that requires client certificates (mTLS);
- `token` is sent on every call as `authorization: Bearer <token>` (over TLS, or over
  plaintext to a loopback server, e.g. in tests);
- `server_name` overrides the name checked against the server certificate (when the
  target is an IP address the certificate does not list).

Files are read when the channel opens. Nothing here reads flags or the environment; the
`circuit` CLI does that (`--ca-cert`, `CIRCUIT_TOKEN`, ...).
"""

from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc


@dataclass(frozen=True)
class Credentials:
    token: str | None = None
    ca_cert: str | Path | None = None  # PEM bundle the server certificate must chain to
    client_cert: str | Path | None = None  # PEM certificate (chain) of this client, for mTLS
    client_key: str | Path | None = None  # its PEM private key
    tls: bool = False  # TLS even without a CA bundle (system roots)
    server_name: str | None = None  # name to verify instead of the target's host

    def __post_init__(self) -> None:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("give client_cert and client_key together (or neither)")

    @property
    def use_tls(self) -> bool:
        return self.tls or self.ca_cert is not None or self.client_cert is not None

    def __repr__(self) -> str:  # never show the token
        shown = {k: getattr(self, k) for k in ("ca_cert", "client_cert", "client_key", "tls", "server_name")}
        return (
            f"Credentials(token={'***' if self.token else None}, "
            + ", ".join(f"{k}={v!r}" for k, v in shown.items())
            + ")"
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_cert),
            private_key=_read(self.client_key),
            certificate_chain=_read(self.client_cert),
        )

    def channel_options(self) -> list[tuple[str, object]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name and self.use_tls else []

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


def _read(path: str | Path | None) -> bytes | None:
    return None if path is None else Path(path).read_bytes()


def open_channel(target: str, options: list[tuple[str, object]], credentials: Credentials | None, *, aio: bool) -> Any:
    """A grpc (or grpc.aio) channel to `target` with TLS and the token as `credentials` say."""
    creds = credentials or Credentials()
    options = [*options, *creds.channel_options()]
    headers = creds.metadata()
    if aio:
        interceptors = _aio_interceptors(headers) if headers else None
        if creds.use_tls:
            return grpc.aio.secure_channel(target, creds.channel_credentials(), options, interceptors=interceptors)
        return grpc.aio.insecure_channel(target, options, interceptors=interceptors)
    channel = (
        grpc.secure_channel(target, creds.channel_credentials(), options)
        if creds.use_tls
        else grpc.insecure_channel(target, options)
    )
    return grpc.intercept_channel(channel, _HeaderInterceptor(headers)) if headers else channel


class _CallDetails(
    namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")),
    grpc.ClientCallDetails,
):
    """Call details of a sync channel, with our metadata added."""


def _with_headers(details: Any, headers: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    return [*(details.metadata or ()), *headers]


class _HeaderInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds fixed metadata (the bearer token) to every call of a sync channel."""

    def __init__(self, headers: tuple[tuple[str, str], ...]) -> None:
        self._headers = headers

    def _details(self, d: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        return _CallDetails(
            d.method,
            d.timeout,
            _with_headers(d, self._headers),
            d.credentials,
            getattr(d, "wait_for_ready", None),
            getattr(d, "compression", None),
        )

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):
        return continuation(self._details(details), request_iterator)


def _aio_interceptors(headers: tuple[tuple[str, str], ...]) -> list[grpc.aio.ClientInterceptor]:
    def details(d: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        return d._replace(metadata=grpc.aio.Metadata(*_with_headers(d, headers)))

    class UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
        async def intercept_unary_unary(self, continuation, client_call_details, request):
            return await continuation(details(client_call_details), request)

    class UnaryStream(grpc.aio.UnaryStreamClientInterceptor):
        async def intercept_unary_stream(self, continuation, client_call_details, request):
            return await continuation(details(client_call_details), request)

    return [UnaryUnary(), UnaryStream()]
