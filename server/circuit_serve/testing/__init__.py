"""Harness shared by the tests (tests/) and the benchmarks (bench/); the server never imports it.

- `redis_server`: a private `redis-server` on a free port, stopped and restarted on demand;
- `certs`: a test PKI (CA, server and client certificates, a rogue client) made with `openssl`;
- `fuzz_requests`: hypothesis strategies for any request of any RPC, on the wire, and the small
  limits (`LIMIT_FLAGS`) of the server they are sent to (needs the `dev` extra's hypothesis).

The random models they run against live in `circuit_serve.demo` (`random_model`,
`random_transcoders`, `large_graph_model`).
"""
