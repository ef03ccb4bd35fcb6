"""The HTML graph view in real headless Chromium, on the demo graph and on a graph of over 2,000 nodes.

Every check reads the page the way a person would (what is drawn, the tooltip, the pinned node's
lists, the header) or through the state the page publishes on `#graph` (`data-drawn-nodes`,
`data-drawn-edges`, `data-edge-threshold`, ...), and compares it with the frontend JSON.
"""

from __future__ import annotations

import io
import json
import time

import pytest

from circuit_client.graph_html import write_graph_html
from tests.graph_view import graphs
from tests.graph_view.browser import RENDER_TIMES, VIEWPORT, launch

GRAPHS = {"demo": graphs.demo_graph, "large": graphs.large_graph}
HOSTILE_LABEL = '<b id="injected">bold</b></script><script>window.__pwned = 3</script>'
LIST_LENGTH = 10  # the page lists this many strongest inputs / outputs


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


class View:
    """One graph's page, opened once; console errors are collected from the start."""

    def __init__(self, name: str, frontend: dict, page, errors: list[str], load_s: float) -> None:
        self.name, self.js, self.page, self.errors, self.load_s = name, frontend, page, errors, load_s

    def state(self) -> dict[str, str]:
        return self.page.eval_on_selector("#graph", "c => ({...c.dataset})")

    def feature_to_hover(self) -> dict:
        """The most influential labelled feature (its label is replaced by markup on the large graph)."""
        feats = [n for n in self.js["nodes"] if n["feature_type"] == "cross layer transcoder" and n["clerp"]]
        return max(feats, key=lambda n: n["node_influence"])

    def point(self, node_id: str) -> tuple[float, float]:
        at = self.page.evaluate("id => window.circuitGraph.locate(id)", node_id)
        assert at is not None, node_id
        return at["x"], at["y"]


@pytest.fixture(scope="module", params=sorted(GRAPHS))
def view(request, browser, tmp_path_factory):
    name = request.param
    frontend = GRAPHS[name]()
    if name == "large":
        assert len(frontend["nodes"]) >= 2000, len(frontend["nodes"])
        assert graphs.MARKUP in frontend["metadata"]["prompt"]
        feats = [n for n in frontend["nodes"] if n["feature_type"] == "cross layer transcoder" and n["clerp"]]
        max(feats, key=lambda n: n["node_influence"])["clerp"] = HOSTILE_LABEL  # labels are user input too
    path = write_graph_html(frontend, tmp_path_factory.mktemp("view") / f"{name}.html", key=f"{name}-key-0123")
    page = browser.new_page(viewport=VIEWPORT)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    started = time.perf_counter()
    page.goto(path.as_uri())
    page.wait_for_selector("#graph[data-state=ready]", state="attached", timeout=60_000)
    load_s = time.perf_counter() - started
    v = View(name, frontend, page, errors, load_s)
    RENDER_TIMES.append(
        f"{name}: {len(frontend['nodes'])} nodes, {len(frontend['links'])} edges; first render "
        f"{1000 * load_s:.0f} ms after navigation (the page's script: {v.state()['renderMs']} ms)"
    )
    yield v
    page.close()


def test_renders_without_console_errors(view):
    assert view.state()["state"] == "ready"
    assert view.errors == []


def test_drawn_nodes_and_edges_equal_the_pruned_json(view):
    s = view.state()
    assert int(s["drawnNodes"]) == len(view.js["nodes"])
    assert int(s["drawnEdges"]) == int(s["totalEdges"]) == len(view.js["links"])
    if view.name == "large":
        assert int(s["drawnNodes"]) >= 2000


def test_hover_shows_label_and_activation(view):
    node = view.feature_to_hover()
    view.page.mouse.move(*view.point(node["node_id"]))
    tip = view.page.wait_for_selector(f'#tooltip[data-node-id="{node["node_id"]}"]', timeout=5_000)
    assert tip.is_visible()
    label = view.page.text_content('#tooltip [data-field="label"]')
    assert node["clerp"] in label  # the raw text, markup included, shown as text
    activation = float(view.page.text_content('#tooltip [data-field="activation"]'))
    assert activation == pytest.approx(node["activation"], rel=1e-5)
    assert view.page.text_content('#tooltip [data-field="layer"]') == node["layer"]
    assert view.page.text_content('#tooltip [data-field="position"]').startswith(str(node["ctx_idx"]))


def _strongest(links: list[dict], node_id: str, end: str, other: str) -> list[tuple[str, float]]:
    mine = [link for link in links if link[end] == node_id]
    mine.sort(key=lambda link: -abs(link["weight"]))  # stable, like the page's sort
    return [(link[other], link["weight"]) for link in mine[:LIST_LENGTH]]


def _listed(page, list_id: str) -> list[tuple[str, float]]:
    items = page.query_selector_all(f"#{list_id} li")
    return [(li.get_attribute("data-node-id"), float(li.get_attribute("data-weight"))) for li in items]


@pytest.mark.parametrize("which", ["logit", "feature"])
def test_click_lists_strongest_inputs_in_weight_order(view, which):
    if which == "logit":
        node = next(n for n in view.js["nodes"] if n["is_target_logit"])
    else:  # the feature with the most incoming edges
        counts: dict[str, int] = {}
        for link in view.js["links"]:
            counts[link["target"]] = counts.get(link["target"], 0) + 1
        feats = [n for n in view.js["nodes"] if n["feature_type"] == "cross layer transcoder"]
        node = max(feats, key=lambda n: (counts.get(n["node_id"], 0), n["node_id"]))
    view.page.mouse.click(*view.point(node["node_id"]))
    view.page.wait_for_selector(f'#graph[data-pinned="{node["node_id"]}"]', state="attached", timeout=5_000)
    expected_in = _strongest(view.js["links"], node["node_id"], "target", "source")
    assert expected_in, "the pinned node has inputs"
    assert _listed(view.page, "inputs") == expected_in
    assert _listed(view.page, "outputs") == _strongest(view.js["links"], node["node_id"], "source", "target")
    # the strongest path back starts with the strongest input and ends where inputs end (token or error)
    path_in = _listed(view.page, "path-in")
    assert path_in[0] == expected_in[0]
    assert path_in[-1][0].startswith(("E_", "err_"))
    assert view.page.text_content("#pinned-label")
    # head loadings (the demo graph has them): each listed input shows its direct part and strongest head
    shown = view.page.query_selector_all("#inputs li .heads")
    with_heads = [x for x in view.js["links"] if x["target"] == node["node_id"] and "head_loadings" in x]
    assert len(shown) == (len(expected_in) if view.name == "demo" else 0) == min(len(with_heads), LIST_LENGTH)
    for li, (source, _) in zip(shown, expected_in):
        link = next(x for x in with_heads if x["source"] == source)
        text = li.text_content()
        assert text.startswith(f"direct {link['head_loadings']['direct']:+.3f}")
        if link["head_loadings"]["heads"]:
            layer, head, w = link["head_loadings"]["heads"][0]
            assert f"L{layer}H{head} {w:+.3f}" in text


def test_slider_hides_weaker_edges(view):
    weights = [abs(link["weight"]) for link in view.js["links"]]
    seen, draw_ms = [], []
    for value in ("500", "1000", "250", "0"):
        before = view.state()["edgeThreshold"]
        view.page.fill("#edge-slider", value)  # sets the value and fires `input`, as dragging does
        view.page.wait_for_function("b => document.getElementById('graph').dataset.edgeThreshold !== b", arg=before)
        s = view.state()
        threshold = float(s["edgeThreshold"])
        expected = sum(w >= threshold for w in weights)
        assert int(s["drawnEdges"]) == expected, (value, threshold)
        assert int(s["drawnNodes"]) == len(view.js["nodes"])
        seen.append(expected)
        draw_ms.append(int(s["drawMs"]))
    at_half, at_max, at_quarter, at_zero = seen
    assert at_zero == len(weights)
    assert 1 <= at_max < at_half < at_quarter < at_zero  # live, monotone, never hides the strongest edge
    assert view.page.text_content("#edge-count").startswith(f"{at_zero} of {len(weights)}")
    RENDER_TIMES.append(f"{view.name}: slider redraws took {min(draw_ms)}-{max(draw_ms)} ms of script each")


def test_prompt_and_labels_are_shown_as_text(view):
    prompt = view.js["metadata"]["prompt"]
    assert view.page.text_content("#prompt") == prompt
    assert view.page.evaluate("() => window.__pwned") is None
    assert view.page.query_selector("#injected") is None
    assert view.page.query_selector("img") is None
    assert view.page.text_content('#info [data-field="key"]') == f"{view.name}-key-0123"
    info = view.js["metadata"]["info"]
    assert view.page.text_content('#info [data-field="replacement-score"]') == f"{info['replacement_score']:.3f}"
    assert view.page.text_content('#info [data-field="completeness-score"]') == f"{info['completeness_score']:.3f}"
    shown = dict(item.split("=", 1) for item in view.page.text_content('#info [data-field="settings"]').split(", "))
    assert {k: json.loads(v) for k, v in shown.items()} == info["settings"]
    if view.name == "large":
        node = view.feature_to_hover()
        view.page.mouse.click(*view.point(node["node_id"]))
        assert HOSTILE_LABEL in view.page.text_content("#pinned-label")
        assert view.page.query_selector("#injected") is None


def test_screenshot_is_not_blank(view):
    from PIL import Image

    view.page.click("#graph", position={"x": 2, "y": 2})  # unpin
    png = view.page.locator("#stage").screenshot()
    image = Image.open(io.BytesIO(png)).convert("RGB")
    colours = image.getcolors(maxcolors=image.width * image.height)  # [(count, (r, g, b))]
    white = sum(count for count, rgb in colours if rgb == (255, 255, 255))
    assert len(colours) > 50, "a drawn graph has many colours"
    assert white < 0.97 * image.width * image.height


def test_no_console_errors_after_interaction(view):
    assert view.errors == []
