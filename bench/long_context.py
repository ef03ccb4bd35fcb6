"""Benchmark: graphs of long prompts in bounded memory, streamed rows against the path before them.

    .venv/bin/python bench/long_context.py [--lengths 128,512,1024,2048,4096] [--today 128,512,1024]
        [--budget-gib 8] [--today-budget-gib 20] [--max-feature-nodes 2000] [--workdir /tmp/long-context]
        [--out bench/results/long_context.md]
    .venv/bin/python bench/long_context.py --smoke     # tiny shape, two short lengths, both paths

1. Model: a random-weight Llama (8 layers, d_model 512, 8 heads, MLP 2048, the demo tokenizer)
   and 4,096-feature JumpReLU per-layer transcoders (circuit_serve.demo) with per-layer
   thresholds calibrated to fire about 70 features per token, written once to --workdir; the
   prompt is random token ids after BOS.
2. Each (path, length) runs in its own subprocess (so each peak RSS is its own, model and
   transcoders included): load, attribute once with max_feature_nodes and the memory budget
   (--budget-gib for the new path; --today-budget-gib for today's, which at 8 GiB refuses 1,024
   tokens: the most that leaves this 24 GiB machine room to run, as the issue measured it),
   report wall time (load excluded), peak RSS (ru_maxrss), active features, L0, spilled bytes.
   "today" is the merge base's code (git archive of --base-rev, default `git merge-base HEAD
   main`), run in its own checkout, so it is the path as it was, not a mode of the new code.
3. Write a Markdown table with `uptime`'s load average and the checks of issue 19.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Features per token and layer on the 256-token calibration prompt. A prompt's L0 falls with its
# length (62 here gave 64.8 at 128 tokens, 56.4 at 512 and 49.1 at 4,096): 70 is chosen to keep
# every length within the 50-100 (the report prints each row's L0).
TARGET_L0 = 70

CHILD = r"""
import json, resource, sys, time
import torch
cfg = json.loads(sys.argv[1])
sys.path[:0] = [cfg["server"]]
from circuit_serve.tracing import ReplacementModel
torch.set_num_threads(cfg["threads"])
rm = ReplacementModel.from_pretrained(cfg["model"], cfg["transcoders"], memory_budget_bytes=cfg["budget"])
g = torch.Generator().manual_seed(0)
V = rm.arch.lm_head.weight.shape[0]
ids = [rm.bos_id()] + torch.randint(4, V, (cfg["tokens"] - 1,), generator=g).tolist()
t0 = time.perf_counter()
out = {"tokens": cfg["tokens"]}
last = [0.0]
def progress(phase, frac):  # a line per 10 s to cfg["log"]: what a stopped run had reached
    now = time.perf_counter() - t0
    if now - last[0] >= 10 or frac >= 1.0:
        last[0] = now
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        with open(cfg["log"], "a") as f:
            f.write(json.dumps(dict(seconds=round(now, 1), phase=phase, fraction=round(frac, 4), peak_rss=rss)) + "\n")
try:
    graph = rm.attribute(ids, max_feature_nodes=cfg["max_feature_nodes"], progress=progress, **cfg["extra"])
    out.update(seconds=time.perf_counter() - t0, active=graph.n_active, selected=graph.n_selected,
               l0=graph.n_active / (graph.n_layers * (graph.n_pos - 1)), timings=graph.timings)
    pr = graph.prune()
    rep, comp = graph.scores()
    out.update(kept_nodes=int(pr.node_mask.sum()), replacement=rep, completeness=comp)
except Exception as e:  # a refusal (over the budget) is a result
    out.update(seconds=time.perf_counter() - t0, error=f"{type(e).__name__}: {e}")
out["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print("RESULT " + json.dumps(out))
"""


def build(workdir: Path, smoke: bool) -> tuple[Path, Path]:
    sys.path.insert(0, str(ROOT / "server"))
    from circuit_serve.demo.random_model import build_demo_model
    from circuit_serve.demo.random_transcoders import write_random_transcoders

    mdir, tdir = workdir / "model", workdir / "transcoders"
    if not (mdir / "config.json").exists():
        shape = dict(n_layers=2, d_model=128, n_heads=2, n_kv_heads=1, d_mlp=256) if smoke else {}
        shape = shape or dict(n_layers=8, d_model=512, n_heads=8, n_kv_heads=8, d_mlp=2048)
        build_demo_model(mdir, seed=0, **shape)
        cfg = json.loads((mdir / "config.json").read_text())
        cfg["max_position_embeddings"] = 8192
        (mdir / "config.json").write_text(json.dumps(cfg, indent=1))
    if not (tdir / "config.yaml").exists():
        write_random_transcoders(mdir, tdir, d_transcoder=512 if smoke else 4096, target_l0=64, seed=0)
        calibrate(mdir, tdir, TARGET_L0)
    return mdir, tdir


def calibrate(mdir: Path, tdir: Path, target_l0: int) -> None:
    """Per-layer JumpReLU thresholds: the residual stream of the random model grows with depth,
    so one threshold cannot fire `target_l0` features everywhere; each layer's is the
    (1 - target_l0 / d_tc) quantile of its pre-activations on a 256-token calibration prompt
    (other ids than the benchmark's)."""
    import torch
    from safetensors.torch import load_file, save_file

    from circuit_serve.tracing import ReplacementModel

    rm = ReplacementModel.from_pretrained(mdir, tdir)
    g = torch.Generator().manual_seed(1)
    V = rm.arch.lm_head.weight.shape[0]
    rec = rm.record(torch.tensor([rm.bos_id()] + torch.randint(4, V, (255,), generator=g).tolist()))
    for li, x in enumerate(rec.x_in):
        pre = rm.transcoders.pre_activations(li, x)[1:].flatten()
        thr = float(torch.sort(pre).values[int(len(pre) * (1 - target_l0 / rm.transcoders.d_transcoder))])
        f = tdir / f"layer_{li}.safetensors"
        sd = load_file(str(f))
        sd["activation_function.threshold"] = torch.full_like(sd["activation_function.threshold"], thr)
        save_file(sd, str(f))


def base_checkout(rev: str, workdir: Path) -> Path:
    dest = workdir / f"base-{rev[:12]}"
    if not (dest / "server").exists():
        dest.mkdir(parents=True, exist_ok=True)
        tar = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "server"], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=tar.stdout, check=True)
    return dest / "server"


def run_one(server: Path, mdir: Path, tdir: Path, tokens: int, args) -> dict:
    streamed = server == ROOT / "server"  # this checkout's code; else today's (--base-rev)
    cfg = dict(
        server=str(server),
        model=str(mdir),
        transcoders=str(tdir),
        tokens=tokens,
        budget=int((args.budget_gib if streamed else args.today_budget_gib) * 2**30),
        max_feature_nodes=args.max_feature_nodes,
        threads=args.threads,
        log=str(Path(args.workdir) / f"progress-{'streamed' if streamed else 'today'}-{tokens}.jsonl"),
        # the new code picks dense rows where they fit the budget: force the streamed rows it measures
        extra={"dense_rows": False} if streamed else {},
    )
    env = {**os.environ, "PYTHONPATH": str(server)}
    p = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True, env=env)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"tokens": tokens, "error": f"exit {p.returncode}: {p.stderr.strip().splitlines()[-1:]}", "peak_rss": 0}


def gib(b: float) -> str:
    return f"{b / 2**30:.2f} GiB"


def table(rows: list[dict]) -> list[str]:
    out = [
        "| path | prompt tokens | active features | L0 | time | s / token | peak RSS | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            out.append(
                f"| {r['path']} | {r['tokens']:,} | | | {r.get('seconds', 0):.1f} s | | {gib(r['peak_rss'])} | {r['error'][:160]} |"
            )
            continue
        out.append(
            f"| {r['path']} | {r['tokens']:,} | {r['active']:,} | {r['l0']:.1f} | {r['seconds']:.1f} s | "
            f"{r['seconds'] / r['tokens']:.3f} | {gib(r['peak_rss'])} | kept nodes {r['kept_nodes']}, "
            f"completeness {r['completeness']:.3f} |"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="128,512,1024,2048,4096")
    ap.add_argument("--today", default="128,512,1024", help="lengths also run with the merge base's code")
    ap.add_argument("--budget-gib", type=float, default=8.0, help="the new (streamed) path's memory budget")
    ap.add_argument("--today-budget-gib", type=float, default=20.0, help="today's path's memory budget")
    ap.add_argument("--max-feature-nodes", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--base-rev", default=None)
    ap.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "long-context"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "long_context.md"))
    ap.add_argument("--code-label", default="this branch", help="what 'streamed' names in the report")
    ap.add_argument("--smoke", action="store_true", help="tiny model, lengths 64,160: checks the script")
    args = ap.parse_args()
    if args.smoke:
        args.lengths, args.today, args.max_feature_nodes = "64,160", "64", 50
        args.workdir = args.workdir + "-smoke"
    workdir = Path(args.workdir)
    mdir, tdir = build(workdir, args.smoke)
    rev = (
        args.base_rev
        or subprocess.run(
            ["git", "-C", str(ROOT), "merge-base", "HEAD", "main"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    base = base_checkout(rev, workdir)
    # every finished run is appended to results.jsonl in --workdir (a rerun skips those runs and
    # the table is rewritten after each one, so an interrupted run keeps what it measured)
    done_file = workdir / "results.jsonl"
    rows = [json.loads(x) for x in done_file.read_text().splitlines()] if done_file.exists() else []
    t_all = time.time()
    # shortest prompt first, both paths at each length: what finishes first is a comparable pair
    today = {int(x) for x in args.today.split(",") if x}
    runs = [(n, p) for n in sorted(int(x) for x in args.lengths.split(",") if x) for p in ("streamed", "today")]
    for n, path in runs:
        server = ROOT / "server" if path == "streamed" else base
        if (path == "today" and n not in today) or any(r["path"] == path and r["tokens"] == n for r in rows):
            continue
        r = run_one(server, mdir, tdir, n, args) | {"path": path}
        print(json.dumps(r), flush=True)
        rows.append(r)
        with done_file.open("a") as f:
            f.write(json.dumps(r) + "\n")
        write_report(rows, args, rev, t_all)
    write_report(rows, args, rev, t_all)


def write_report(rows: list[dict], args, rev: str, t_all: float) -> None:
    rows = sorted(rows, key=lambda r: (r["path"] != "today", r["tokens"]))
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    new = {r["tokens"]: r for r in rows if r["path"] == "streamed" and "error" not in r}
    budget = args.budget_gib * 2**30
    lines = [
        "# Long prompts in bounded memory (bench/long_context.py)",
        "",
        f"Command: `.venv/bin/python bench/long_context.py{''.join(' ' + a for a in sys.argv[1:])}` "
        f"(max_feature_nodes {args.max_feature_nodes}, budget {args.budget_gib:g} GiB, today's "
        f"{args.today_budget_gib:g} GiB, {args.threads} threads); "
        f"'today' = the code at {rev[:12]} (merge base), 'streamed' = {args.code_label}. Each row is its own process; "
        "peak RSS is the process's (model and transcoders included), time excludes loading.",
        "",
        f"Machine: {os.cpu_count()} CPU cores, no GPU used (the rows run on the CPU); `uptime` at the end: {load}. "
        "The load average counts this benchmark's own process and any other work on the machine.",
        "",
        *table(rows),
        "",
        "Checks (issue 19):",
    ]
    within = all(r["peak_rss"] <= budget for r in rows if r["path"] == "streamed")
    lines.append(f"- streamed peak RSS within {args.budget_gib:g} GiB at every length: {'yes' if within else 'NO'}")
    longest = max(int(x) for x in args.lengths.split(","))
    lines.append(f"- {longest}-token graph completes: {'yes' if longest in new else 'NO'}")
    shorter = [n for n in sorted(new) if n < longest]
    lo = 512 if 512 in shorter else (shorter[-1] if shorter else None)
    if lo is not None and longest in new:
        ratio = (new[longest]["seconds"] / longest) / (new[lo]["seconds"] / lo)
        lines.append(
            f"- time per token at {longest} / at {lo}: {ratio:.2f} (issue: within 3): {'yes' if ratio <= 3 else 'NO'}"
        )
    missing = [
        f"{p} {n}"
        for p, ls in (("streamed", args.lengths), ("today", args.today))
        for n in ls.split(",")
        if not any(r["path"] == p and str(r["tokens"]) == n for r in rows)
    ]
    if missing:
        lines.append(f"- not measured yet (run still going or stopped): {', '.join(missing)}")
    lines += ["", f"Wall time of this invocation so far: {time.time() - t_all:.0f} s.", ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))


if __name__ == "__main__":
    main()
