"""A graph's strongest paths as lines of text (for terminals: the demo and `circuit attribute`).

Reads the frontend graph JSON (the `nodes[]` / `links[]` format that attribution-graph
frontends load), so it works on any graph the server returns, cached or fresh.
"""

from __future__ import annotations

from typing import Any


def _describe_node(node: dict[str, Any], tokens: list[str]) -> str:
    pos = node.get("ctx_idx", 0)
    token = tokens[pos] if 0 <= pos < len(tokens) else "?"
    kind = node.get("feature_type", "")
    if kind == "embedding":
        return f'embedding of "{token}" (pos {pos})'
    if kind == "logit":
        return node.get("clerp") or f"logit {node.get('feature')}"
    if "error" in kind:
        return f'error node, layer {node.get("layer")} at "{token}" (pos {pos})'
    label = node.get("clerp") or "unlabelled"
    return f'L{node.get("layer")} feature at "{token}" (pos {pos}): {label}'


def strongest_paths(frontend: dict[str, Any], *, top: int = 5, depth: int = 2) -> list[str]:
    """For each target logit, its `top` strongest direct inputs, each followed back `depth - 1`
    more steps along its strongest input (the edge weights are direct effects)."""
    nodes = {n["node_id"]: n for n in frontend["nodes"]}
    tokens = list(frontend.get("metadata", {}).get("prompt_tokens", []))
    incoming: dict[str, list[tuple[float, str]]] = {}
    for link in frontend["links"]:
        incoming.setdefault(link["target"], []).append((float(link["weight"]), link["source"]))
    for edges in incoming.values():
        edges.sort(key=lambda e: -abs(e[0]))

    lines = []
    for logit in (n for n in frontend["nodes"] if n.get("is_target_logit")):
        lines.append(_describe_node(logit, tokens))
        for weight, source in incoming.get(logit["node_id"], [])[:top]:
            lines.append(f"  {weight:+8.3f}  <- {_describe_node(nodes[source], tokens)}")
            node, indent = source, "  "
            for _ in range(depth - 1):
                if not incoming.get(node):
                    break
                w, node = incoming[node][0]
                indent += "  "
                lines.append(f"  {indent}{w:+8.3f}  <- {_describe_node(nodes[node], tokens)}")
    return lines
