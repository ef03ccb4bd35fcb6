"""Benchmark: this engine's attribution graphs against circuit-tracer 0.5.0, same inputs, one run.

    .venv/bin/python bench/attribution.py [--ref-python /work/ref-venv/bin/python]
        [--ref-scripts /work/shared/reference] [--threads 1] [--reps 3] [--out bench/results/attribution.md]
    .venv/bin/python bench/attribution.py --gpu-gemma2-2b     # GPU only: Gemma-2-2B-shaped random model

1. Models: the committed tiny fixture (tests/fixtures/reference/llama), plus, when the reference
   venv is present, a larger Llama and Gemma-2 built by the reference's make_tiny.py (cached in
   --workdir).
2. For each configuration (model, transcoders, prompt, settings): time `attribute` of this
   engine in this process and of circuit-tracer (TransformerLens backend, via the reference's
   oracle.py helpers) in a subprocess of the reference venv; both load once, then run `--reps`
   times; the best time of each counts (model loading excluded on both sides).
3. Check that the graphs agree (same active features, logit targets and selection; adjacency
   within 1e-4 of the largest edge; with max_feature_nodes: >= 95% shared selection, shared
   edges within the same tolerance) and write the ratio to --out. Without the reference venv the
   reference columns say "not run".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "server"))
sys.path.insert(0, str(ROOT / "client"))

from circuit_serve.tracing import ReplacementModel  # noqa: E402

PROMPT = "The capital of France is Paris. The capital of Germany is"

# Runs inside the reference venv: load once, attribute `reps` times, save the last graph.
REF_RUNNER = r"""
import json, sys, time
import numpy as np, torch
cfg = json.loads(sys.argv[1])
sys.path.insert(0, cfg["scripts"])
torch.set_num_threads(cfg["threads"])
import oracle
from circuit_tracer import attribute
tcs, _ = oracle.load_transcoders(cfg["transcoders"])
model, _ = oracle.build_tl_model(cfg["model"], tcs)
ids = torch.tensor(cfg["tokens"])
times = []
for _ in range(cfg["reps"]):
    t = time.perf_counter()
    g = attribute(ids, model, max_n_logits=cfg["max_n_logits"], desired_logit_prob=cfg["desired_logit_prob"],
                  batch_size=cfg["batch_size"], max_feature_nodes=cfg["max_feature_nodes"])
    times.append(time.perf_counter() - t)
np.savez(cfg["out"], adjacency_matrix=g.adjacency_matrix.float().numpy(),
         active_features=g.active_features.numpy(), selected_features=g.selected_features.numpy(),
         logit_targets=g.logit_token_ids.numpy(), n_layers=g.cfg.n_layers)
print("RESULT " + json.dumps({"times": times}))
"""


@dataclass
class Config:
    name: str
    model: Path
    transcoders: Path
    max_feature_nodes: int | None = None
    batch_size: int = 256
    max_n_logits: int = 10
    desired_logit_prob: float = 0.95


def make_models(args, workdir: Path) -> list[Config]:
    fx = ROOT / "tests" / "fixtures" / "reference"
    cfgs = [Config("tiny llama PLT (fixture, d=32, 3 layers)", fx / "llama" / "model", fx / "llama" / "transcoders")]
    if not (args.ref_python and Path(args.ref_python).exists()):
        return cfgs
    for arch, extra in (("llama", []), ("gemma2", [])):
        out = workdir / f"{arch}-small"
        if not (out / "manifest.json").exists():
            cmd = [args.ref_python, str(Path(args.ref_scripts) / "make_tiny.py"), "--out", str(out), "--arch", arch,
                   "--n-layers", "6", "--d-model", "128", "--n-heads", "4", "--n-kv-heads", "2", "--d-mlp", "512",
                   "--d-transcoder", "1024", "--vocab-size", "512", "--n-ctx", "128", "--clt", *extra]
            print("building", out, flush=True)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        tag = "ReLU+skip" if arch == "llama" else "JumpReLU"
        cfgs.append(Config(f"small {arch} PLT {tag} (d=128, 6 layers, 1024 features)", out / "model", out / "transcoders"))
        cfgs.append(Config(f"small {arch} CLT (d=128, 6 layers, 1024 features)", out / "model", out / "clt"))
        cfgs.append(Config(f"small {arch} PLT, max_feature_nodes=500, batch 64", out / "model", out / "transcoders",
                           max_feature_nodes=500, batch_size=64))
    return cfgs


def run_ours(cfg: Config, reps: int):
    rm = ReplacementModel.from_pretrained(cfg.model, cfg.transcoders)
    tokens = rm.tokenize(PROMPT)
    times, g = [], None
    for _ in range(reps):
        t = time.perf_counter()
        g = rm.attribute(tokens, max_n_logits=cfg.max_n_logits, desired_logit_prob=cfg.desired_logit_prob,
                         max_feature_nodes=cfg.max_feature_nodes, batch_size=cfg.batch_size)
        times.append(time.perf_counter() - t)
    return tokens, g, times


def run_reference(cfg: Config, tokens: list[int], args, tmp: Path):
    out = tmp / "ref.npz"
    spec = dict(scripts=args.ref_scripts, threads=args.threads, model=str(cfg.model), transcoders=str(cfg.transcoders),
                tokens=tokens, reps=args.reps, max_n_logits=cfg.max_n_logits, desired_logit_prob=cfg.desired_logit_prob,
                batch_size=cfg.batch_size, max_feature_nodes=cfg.max_feature_nodes, out=str(out))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([args.ref_python, "-c", REF_RUNNER, json.dumps(spec)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"reference failed:\n{proc.stderr[-3000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return np.load(out), json.loads(line[7:])["times"]


def agreement(g, Z, limited: bool) -> str:
    R = Z["adjacency_matrix"]
    tol = 1e-4 * np.abs(R).max()
    if not np.array_equal(g.active_features.numpy(), Z["active_features"]):
        return "DIFFERENT active features"
    if g.logit_token_ids.tolist() != Z["logit_targets"].tolist():
        return "DIFFERENT logit targets"
    A = g.adjacency().numpy()
    if not limited:
        if g.selected_features.tolist() != Z["selected_features"].tolist():
            return "DIFFERENT selection"
        diff = np.abs(A - R).max()
        return f"identical nodes; max |dA| = {diff / np.abs(R).max():.1e} x max edge" + ("" if diff <= tol else " (FAIL)")
    ours, theirs = g.selected_features.tolist(), Z["selected_features"].tolist()
    shared = sorted(set(ours) & set(theirs))
    io = [ours.index(x) for x in shared] + list(range(len(ours), A.shape[0]))
    ir = [theirs.index(x) for x in shared] + list(range(len(theirs), R.shape[0]))
    diff = np.abs(A[np.ix_(io, io)] - R[np.ix_(ir, ir)]).max()
    ok = len(shared) >= 0.95 * len(theirs) and diff <= tol
    return (f"{len(shared)}/{len(theirs)} selected shared; shared edges max |dA| = {diff / np.abs(R).max():.1e} x max edge"
            + ("" if ok else " (FAIL)"))


def gpu_gemma2_2b(args) -> str:
    """Gemma-2-2B-shaped random model + 16,384-feature JumpReLU PLTs, 16 tokens, 7,500 feature nodes."""
    from transformers import AutoModelForCausalLM, Gemma2Config, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    from circuit_serve.tracing.transcoders import TranscoderSet

    dev = "cuda"
    cfg = Gemma2Config(vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                       num_attention_heads=8, num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256,
                       sliding_window=4096, final_logit_softcapping=30.0, attn_logit_softcapping=50.0,
                       max_position_embeddings=8192)
    torch.manual_seed(0)
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager").eval()
    L, d, n_tc = 26, 2304, 16384
    g = torch.Generator(device=dev).manual_seed(0)
    tokens = torch.randint(3, 256000, (16,), generator=g, device=dev)
    tokens[0] = 2
    # encoders on the prompt's own transcoder inputs; per-layer threshold keeps ~64 features per token
    W_enc = [torch.nn.functional.normalize(torch.randn(n_tc, d, generator=g, device=dev), dim=1) for _ in range(L)]
    tcs = TranscoderSet(kind="plt", W_enc=W_enc, b_enc=[torch.zeros(n_tc, device=dev) for _ in range(L)],
                        W_dec=[torch.randn(n_tc, d, generator=g, device=dev) * d**-0.5 for _ in range(L)],
                        b_dec=[torch.zeros(d, device=dev) for _ in range(L)], activation="jumprelu",
                        feature_input_hook="ln2.hook_normalized", feature_output_hook="hook_mlp_out",
                        threshold=[torch.zeros(n_tc, device=dev) for _ in range(L)], scan="bench-gemma2-2b-shape",
                        identity="random")
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0, "<eos>": 1, "<bos>": 2},
                                                                               unk_token="<pad>")),
                                  bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    rm = ReplacementModel.from_hf(model, tok, tcs, model_id="random-gemma2-2b-shape")
    rec = rm.record(tokens.cpu())
    for li in range(L):
        pre = tcs.pre_activations(li, rec.x_in[li][1:])
        tcs.threshold[li][:] = torch.quantile(pre.flatten().float()[:16_000_000], 1 - 64 / n_tc)
    torch.cuda.synchronize()
    lines = []
    for rep in range(2):
        torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        graph = rm.attribute(tokens.cpu(), max_feature_nodes=7500, batch_size=256)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t
        peak = torch.cuda.max_memory_allocated() / 2**30
        lines.append(f"| Gemma-2-2B-shaped random, 16 tokens, max_feature_nodes 7500 (run {rep + 1}) | "
                     f"{graph.n_active} active, {graph.n_selected} selected | {dt:.2f} s | {peak:.2f} GiB peak "
                     f"(model + transcoders + graph) | {json.dumps({k: round(v, 3) for k, v in graph.timings.items()})} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref-python", default="/work/ref-venv/bin/python")
    ap.add_argument("--ref-scripts", default="/work/shared/reference")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "circuit-serve-bench")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "attribution.md")
    ap.add_argument("--gpu-gemma2-2b", action="store_true", help="time the Gemma-2-2B-shaped config on CUDA")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.gpu_gemma2_2b:
        print(gpu_gemma2_2b(args))
        return 0
    args.workdir.mkdir(parents=True, exist_ok=True)
    have_ref = Path(args.ref_python).exists() and (Path(args.ref_scripts) / "oracle.py").exists()
    if not have_ref:
        print(f"reference venv or scripts not found ({args.ref_python}); timing this engine only")
        args.ref_python = None
    rows = []
    for cfg in make_models(args, args.workdir):
        tokens, g, ours = run_ours(cfg, args.reps)
        ref_t, agree = None, "reference not run"
        if have_ref:
            with tempfile.TemporaryDirectory() as tmp:
                Z, ref_times = run_reference(cfg, tokens, args, Path(tmp))
            ref_t = min(ref_times)
            agree = agreement(g, Z, cfg.max_feature_nodes is not None)
        ratio = f"{min(ours) / ref_t:.3f}" if ref_t else "n/a"
        rows.append(f"| {cfg.name} | {len(tokens)} | {g.n_active} / {g.n_selected} | "
                    f"{ref_t if ref_t is None else f'{ref_t:.3f} s'} | {min(ours):.3f} s | {ratio} | {agree} |")
        print(rows[-1], flush=True)
    ts = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    text = f"""# Attribution benchmark

Written by `bench/attribution.py` on {ts}: {platform.machine()}, {os.cpu_count()} CPUs visible,
torch {torch.__version__} with {args.threads} thread(s) on both sides, float32, CPU. Prompt:
"{PROMPT}" (BOS prepended). Best of {args.reps} runs each, model loading excluded. Reference:
circuit-tracer 0.5.0 (TransformerLens backend) in its own venv, same model files, tokens and
settings (max_n_logits 10, desired_logit_prob 0.95). Ratio = this engine / reference (target <= 0.333).

| configuration | tokens | active / selected features | reference | this engine | ratio | graphs |
|---|---|---|---|---|---|---|
""" + "\n".join(rows) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
