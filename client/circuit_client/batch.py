"""Backfills: the graphs of many prompts or served completions, resumable, into a directory.

    from circuit_client.attribution import AttributionClient, AttributionSettings
    from circuit_client.batch import read_items, run_batch

    with AttributionClient("localhost:50051") as graphs:
        summary = run_batch(graphs, read_items("audit.jsonl"), "out/", AttributionSettings(max_feature_nodes=256))

Each input line is a JSON object: `{"prompt": "..."}`, `{"prompt_token_ids": [...]}` or
`{"request_id": "...", "token_index": 3}`. Steps:
1. read DIR/index.jsonl (if any): the lines already written are done and skipped;
2. submit the others, `parallel` at a time, as background jobs of the lowest class (backfill),
   so a fleet computes them after interactive and background work and finishes each even if
   this client is killed; a graph already cached is answered from the cache, not recomputed;
3. write each graph to DIR/<key>.json and append its line to the index: the input line number,
   the input, the key, the file and the graph's replacement and completeness scores;
4. report progress after each graph (`on_progress(done, total)`).
A failed item is counted and reported (`BatchSummary.failed`), not written: running again retries it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from circuit_client.attribution import AttributionSettings, GraphResult
from circuit_client.errors import CircuitRpcError

INDEX = "index.jsonl"
_INPUTS = ("prompt", "prompt_token_ids", "request_id", "token_index")


@dataclass
class BatchSummary:
    total: int
    skipped: int = 0  # already in the index (an earlier run)
    written: int = 0
    failed: dict[int, str] = field(default_factory=dict)  # input line -> error


def read_items(path: str | Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file (blank lines skipped); raises ValueError naming a bad line."""
    items = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not JSON ({exc})") from None
        if not isinstance(item, dict) or not any(k in item for k in _INPUTS[:3]):
            raise ValueError(f"{path}:{number}: give prompt, prompt_token_ids or request_id (+ token_index)")
        items.append({k: item[k] for k in _INPUTS if k in item})
    return items


def done_lines(out_dir: str | Path) -> set[int]:
    """Input line numbers (0-based) the index of `out_dir` lists, with their graph file present."""
    out = Path(out_dir)
    index = out / INDEX
    if not index.is_file():
        return set()
    done = set()
    for line in index.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if (out / row["file"]).is_file():
            done.add(int(row["line"]))
    return done


def run_batch(
    client: Any,
    items: Iterable[dict[str, Any]],
    out_dir: str | Path,
    settings: AttributionSettings | None = None,
    *,
    parallel: int = 4,
    on_progress: Callable[[int, int], None] | None = None,
) -> BatchSummary:
    """Steps 1-4 with a blocking `AttributionClient`; returns what happened."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items = list(items)
    done = done_lines(out)  # 1.
    todo = [(i, item) for i, item in enumerate(items) if i not in done]
    summary = BatchSummary(total=len(items), skipped=len(items) - len(todo))
    lock = threading.Lock()
    index = (out / INDEX).open("a")

    def one(line: int, item: dict[str, Any]) -> None:
        try:
            result: GraphResult = client.attribute(  # 2.
                item.get("prompt"),
                settings,
                prompt_token_ids=item.get("prompt_token_ids"),
                request_id=item.get("request_id"),
                token_index=item.get("token_index"),
                background=True,
                job_class="backfill",
                output="json",
            )
        except CircuitRpcError as err:
            with lock:
                summary.failed[line] = f"{err.code.name}: {err.details}"
            return
        name = f"{result.key}.json"
        result.save_json(str(out / name))  # 3.
        info = result.frontend().get("metadata", {}).get("info", {})
        row = {
            "line": line,
            "input": item,
            "key": result.key,
            "file": name,
            "source": result.source,
            "replacement_score": info.get("replacement_score"),
            "completeness_score": info.get("completeness_score"),
        }
        with lock:
            index.write(json.dumps(row) + "\n")
            index.flush()
            summary.written += 1
            if on_progress is not None:  # 4.
                on_progress(summary.skipped + summary.written + len(summary.failed), summary.total)

    try:
        with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="backfill") as pool:
            for future in [pool.submit(one, line, item) for line, item in todo]:
                future.result()
    finally:
        index.close()
    return summary
