"""One self-contained HTML page per attribution graph (opens offline in any browser).

    from circuit_client.graph_html import write_graph_html
    write_graph_html(result.frontend(), "graph.html", key=result.key)

The page inlines its script (`graph_view.js`) and styles (`graph_view.css`), both shipped with this
package, and the graph's frontend JSON. The JSON sits in a `<script type="application/json">`
element with `<`, `>`, `&` and the line separators U+2028/U+2029 written as `\\uXXXX` escapes, so
no prompt or label can close that element or start markup; the script reads it with `JSON.parse`
and writes every string into the page with `textContent`. Pure Python: no torch, no server.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>attribution graph</title>
<style>
{css}
</style>
</head>
<body>
<header>
<h1 id="prompt"></h1>
<dl id="info"></dl>
</header>
<div id="controls">
<label for="edge-slider">hide weaker edges</label>
<input type="range" id="edge-slider" min="0" max="1000" step="1" value="0">
<span id="edge-count"></span>
<span class="legend"><span><i class="swatch feature"></i>feature (darker: higher activation)</span><span><i class="swatch error"></i>error</span><span><i class="swatch embedding"></i>embedding</span><span><i class="swatch logit"></i>logit</span><span><i class="swatch pos"></i>positive</span><span><i class="swatch neg"></i>negative</span><span>size: influence</span></span>
</div>
<main>
<div id="stage"><div id="sizer"></div><canvas id="graph" data-state="loading"></canvas><canvas id="overlay"></canvas><div id="tooltip" hidden></div></div>
<aside id="details"></aside>
</main>
<script type="application/json" id="graph-data">{data}</script>
<script>
{js}
</script>
</body>
</html>
"""


def embed_json(value: Any) -> str:
    """JSON text that is safe inside a `<script>` element (see the module docstring)."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return "".join(_ESCAPES.get(ch, ch) for ch in text) if any(ch in text for ch in _ESCAPES) else text


def _asset(name: str) -> str:
    text = resources.files("circuit_client").joinpath(name).read_text(encoding="utf-8")
    if "</script" in text.lower() or "</style" in text.lower():  # it would end its own element
        raise ValueError(f"{name} contains a closing tag; it cannot be inlined")
    return text


def graph_html(frontend: dict[str, Any], *, key: str = "", source: str = "") -> str:
    """The page for one graph. `frontend` is the pruned frontend JSON (`metadata`, `nodes`,
    `links`); `key` is the graph's cache key (empty when it was computed offline)."""
    for field in ("nodes", "links"):
        if not isinstance(frontend.get(field), list):
            raise ValueError(f"not a frontend graph JSON: `{field}` is missing or not a list")
    payload = {"graph": frontend, "key": key, "source": source}
    return _PAGE.format(css=_asset("graph_view.css"), js=_asset("graph_view.js"), data=embed_json(payload))


def write_graph_html(frontend: dict[str, Any], path: str | Path, *, key: str = "", source: str = "") -> Path:
    """Write `graph_html(...)` to `path` (parent folders created); return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(graph_html(frontend, key=key, source=source), encoding="utf-8")
    return out
