"""Features: labels, watchlist monitoring of served traffic, feature activations and steering.

Everything here works on the attribution engine's replacement model (circuit_serve.tracing)
and knows no protobuf:

- `labels`:     the optional labels file (layer, index -> label).
- `watchlist`:  the watchlist file (named features, thresholds, actions), checked at start-up.
- `monitor`:    watched-feature reports over prompt + completion token ids.
- `stop_rule`:  monitored generation streams: tokens are released in checked groups so a
                `stop` rule ends the completion at the firing token.
- `steering`:   generation on the replacement model with feature interventions.
"""
