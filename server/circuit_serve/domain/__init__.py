"""The domain core: what engines and services share, and nothing they are made of.

Plain data, domain errors and request checks (no protobuf, no vLLM, no torch); every other
package of circuit_serve may import it, and it imports none of them.

- `errors`:            domain errors; `circuit_serve.rpc.status` maps them to gRPC status codes.
- `chat`:              chat messages and their rendering with the model's chat template.
- `input_checks`:      size checks shared by every service (text bytes, entry counts).
- `features`:          transcoder features, watchlist rules, monitoring asks, watches and reports.
- `generation`:        generation requests, sampling options, chunks, results, finish reasons.
- `generation_checks`: a generation request's checks against the served model's limits.
- `monitor`:           the protocols the generation engine drives in-engine monitoring through
                       (`RequestMonitor`, `WatchedRequest`; circuit_serve.monitoring implements them).
"""
