"""Screenshot of the graph view of the demo graph (the README's picture).

    .venv/bin/python server/scripts/graph_screenshot.py [OUT.png] [--html OUT.html]

Computes the demo model's attribution graph of the demo prompt in-process (the committed model,
transcoders and labels; default settings, as the demo's audit), writes its HTML view, opens it in
Debian's headless Chromium (/usr/bin/chromium, driven by Playwright), pins the strongest input of
the predicted token so that the side panel lists its inputs and outputs, and saves a PNG
(default: server/docs/graph_view.png).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def demo_graph() -> dict:
    import torch

    from circuit_serve.commands.demo import DEFAULT_PROMPT
    from circuit_serve.demo.install import ASSETS
    from circuit_serve.tracing import ReplacementModel

    torch.set_num_threads(1)
    labels = {(e["layer"], e["index"]): e["label"] for e in json.loads((ASSETS / "labels.json").read_text())}
    rm = ReplacementModel.from_pretrained(ASSETS / "model", ASSETS / "transcoders", dtype=torch.float32, device="cpu")
    return rm.attribute(DEFAULT_PROMPT).to_frontend_json(slug="demo", labels=labels)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", type=Path, default=ROOT / "server" / "docs" / "graph_view.png")
    parser.add_argument("--html", type=Path, default=None, help="also keep the HTML page here")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from circuit_client.graph_html import write_graph_html

    graph = demo_graph()
    target = next(n for n in graph["nodes"] if n["is_target_logit"])
    inputs = sorted(
        (link for link in graph["links"] if link["target"] == target["node_id"]), key=lambda link: -abs(link["weight"])
    )
    with tempfile.TemporaryDirectory() as tmp:
        page_path = write_graph_html(graph, args.html or Path(tmp) / "demo.html", source="offline")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, headless=True, args=FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 820})
            page.goto(page_path.as_uri())
            page.wait_for_selector("#graph[data-state=ready]", state="attached", timeout=60_000)
            at = page.evaluate("id => window.circuitGraph.locate(id)", inputs[0]["source"])
            page.mouse.click(at["x"], at["y"])
            page.mouse.move(at["x"], at["y"])  # its tooltip too
            page.wait_for_selector("#tooltip:not([hidden])", timeout=5_000)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out))
            browser.close()
    print(f"wrote {args.out} ({len(graph['nodes'])} nodes, {len(graph['links'])} edges)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
