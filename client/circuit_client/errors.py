"""The one exception type the client raises for a failed call."""

from __future__ import annotations

import grpc


class CircuitRpcError(Exception):
    """A call failed with a gRPC status (`code`) and the server's message (`details`)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError) -> CircuitRpcError:
        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        details = err.details() if hasattr(err, "details") else str(err)
        return cls(code or grpc.StatusCode.UNKNOWN, details or "")
