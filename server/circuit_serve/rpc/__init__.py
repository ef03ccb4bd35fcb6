"""The RPC layer: servicers that convert protobuf <-> domain objects and await an engine,
the one map from domain errors to gRPC status codes (status.py), and the server
interceptor (interceptors.py)."""
