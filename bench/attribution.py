"""Benchmark: this engine's attribution graphs against circuit-tracer 0.5.0, same inputs, one run.

    .venv/bin/python bench/attribution.py [--ref-python /work/ref-venv/bin/python]
        [--ref-scripts /work/shared/reference] [--threads 1] [--reps 3] [--out bench/results/attribution.md]
    .venv/bin/python bench/attribution.py --gpu-gemma2-2b [--ref-site DIR|TGZ]   # GPU: Gemma-2-2B shape
    .venv/bin/python bench/attribution.py --shaped-smoke [--ref-site DIR]   # the same path, tiny, on the CPU

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
4. `--gpu-gemma2-2b`: a random Gemma-2-2B-shaped model with 16,384-feature JumpReLU PLTs on CUDA,
   16 tokens, max_feature_nodes 7500: this engine twice, then the same files, tokens and settings
   through circuit-tracer 0.5.0 (nnsight backend, float32, CUDA) in a subprocess whose PYTHONPATH
   starts with `--ref-site` (circuit-tracer, nnsight, transformers 4.57.3 and their pure-Python
   dependencies, or a .tgz of them), so one command on a GPU machine gives both numbers.
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
            cmd = [
                args.ref_python,
                str(Path(args.ref_scripts) / "make_tiny.py"),
                "--out",
                str(out),
                "--arch",
                arch,
                "--n-layers",
                "6",
                "--d-model",
                "128",
                "--n-heads",
                "4",
                "--n-kv-heads",
                "2",
                "--d-mlp",
                "512",
                "--d-transcoder",
                "1024",
                "--vocab-size",
                "512",
                "--n-ctx",
                "128",
                "--clt",
                *extra,
            ]
            print("building", out, flush=True)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        tag = "ReLU+skip" if arch == "llama" else "JumpReLU"
        cfgs.append(
            Config(f"small {arch} PLT {tag} (d=128, 6 layers, 1024 features)", out / "model", out / "transcoders")
        )
        cfgs.append(Config(f"small {arch} CLT (d=128, 6 layers, 1024 features)", out / "model", out / "clt"))
        cfgs.append(
            Config(
                f"small {arch} PLT, max_feature_nodes=500, batch 64",
                out / "model",
                out / "transcoders",
                max_feature_nodes=500,
                batch_size=64,
            )
        )
    return cfgs


def run_ours(cfg: Config, reps: int):
    rm = ReplacementModel.from_pretrained(cfg.model, cfg.transcoders)
    tokens = rm.tokenize(PROMPT)
    times, g = [], None
    for _ in range(reps):
        t = time.perf_counter()
        g = rm.attribute(
            tokens,
            max_n_logits=cfg.max_n_logits,
            desired_logit_prob=cfg.desired_logit_prob,
            max_feature_nodes=cfg.max_feature_nodes,
            batch_size=cfg.batch_size,
        )
        times.append(time.perf_counter() - t)
    return tokens, g, times


def run_reference(cfg: Config, tokens: list[int], args, tmp: Path):
    out = tmp / "ref.npz"
    spec = dict(
        scripts=args.ref_scripts,
        threads=args.threads,
        model=str(cfg.model),
        transcoders=str(cfg.transcoders),
        tokens=tokens,
        reps=args.reps,
        max_n_logits=cfg.max_n_logits,
        desired_logit_prob=cfg.desired_logit_prob,
        batch_size=cfg.batch_size,
        max_feature_nodes=cfg.max_feature_nodes,
        out=str(out),
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [args.ref_python, "-c", REF_RUNNER, json.dumps(spec)], capture_output=True, text=True, env=env
    )
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
        return f"identical nodes; max |dA| = {diff / np.abs(R).max():.1e} x max edge" + (
            "" if diff <= tol else " (FAIL)"
        )
    ours, theirs = g.selected_features.tolist(), Z["selected_features"].tolist()
    shared = sorted(set(ours) & set(theirs))
    io = [ours.index(x) for x in shared] + list(range(len(ours), A.shape[0]))
    ir = [theirs.index(x) for x in shared] + list(range(len(theirs), R.shape[0]))
    diff = np.abs(A[np.ix_(io, io)] - R[np.ix_(ir, ir)]).max()
    ok = len(shared) >= 0.95 * len(theirs) and diff <= tol
    return (
        f"{len(shared)}/{len(theirs)} selected shared; shared edges max |dA| = {diff / np.abs(R).max():.1e} x max edge"
        + ("" if ok else " (FAIL)")
    )


REF_SHAPED = r"""
import json, os, sys, time
import numpy as np, torch
cfg = json.loads(sys.argv[1])
from circuit_tracer import attribute
from circuit_tracer.utils.caching import load_transcoders_from_cache
from circuit_tracer.replacement_model.replacement_model_nnsight import NNSightReplacementModel
dev = torch.device(cfg["device"])
t0 = time.perf_counter()
parent, name = os.path.split(cfg["transcoders"])
tcs, _ = load_transcoders_from_cache(name, cache_dir=parent, device=dev, dtype=torch.float32, lazy_encoder=False,
                                     lazy_decoder=True)
model = NNSightReplacementModel.from_pretrained_and_transcoders(cfg["model"], tcs, device=dev, dtype=torch.float32)
load = time.perf_counter() - t0
cuda = dev.type == "cuda"
times = []
for _ in range(cfg["reps"]):
    if cuda:
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    g = attribute(torch.tensor(cfg["tokens"]), model, max_n_logits=10, desired_logit_prob=0.95, batch_size=256,
                  max_feature_nodes=cfg["max_feature_nodes"])
    if cuda:
        torch.cuda.synchronize()
    times.append(time.perf_counter() - t)
peak = torch.cuda.max_memory_allocated() if cuda else 0
np.savez(cfg["out"], adjacency_matrix=g.adjacency_matrix.float().cpu().numpy(),
         active_features=g.active_features.cpu().numpy(), selected_features=g.selected_features.cpu().numpy(),
         logit_targets=g.logit_token_ids.cpu().numpy())
print("RESULT " + json.dumps({"times": times, "load": load, "peak": peak, "versions": {
    "torch": torch.__version__, "transformers": __import__("transformers").__version__}}))
"""


def ref_pythonpath(site: Path, tmp: Path) -> str:
    """The reference's packages: a directory, or a .tgz of one (unpacked under `tmp`)."""
    if site.suffix in (".tgz", ".gz"):
        import tarfile

        with tarfile.open(site) as tf:
            tf.extractall(tmp, filter="data")
        site = next(p for p in tmp.iterdir() if p.is_dir())
    return str(site)


def run_reference_shaped(
    model_dir: Path,
    tc_dir: Path,
    tokens: list[int],
    *,
    device: str,
    max_feature_nodes: int,
    reps: int,
    site: Path | None,
    tmp: Path,
):
    """circuit-tracer on the saved files in a subprocess; (npz, result dict) or (None, reason)."""
    spec = dict(
        model=str(model_dir),
        transcoders=str(tc_dir),
        tokens=tokens,
        device=device,
        reps=reps,
        max_feature_nodes=max_feature_nodes,
        out=str(tmp / "ref.npz"),
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if site is not None:
        env["PYTHONPATH"] = ref_pythonpath(site, tmp)
    proc = subprocess.run([sys.executable, "-c", REF_SHAPED, json.dumps(spec)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return None, "reference failed: " + " | ".join(proc.stderr.strip().splitlines()[-4:])[-800:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return np.load(tmp / "ref.npz"), json.loads(line[7:])


def save_shaped(model, tok, tcs, workdir: Path) -> tuple[Path, Path]:
    """The random model and transcoders in the formats circuit-tracer reads (float32)."""
    from safetensors.torch import save_file

    model_dir, tc_dir = workdir / "model", workdir / "transcoders"
    model.save_pretrained(str(model_dir))
    tok.save_pretrained(str(model_dir))
    tc_cfg = model_dir / "tokenizer_config.json"  # a class name transformers 4.x (the reference's) knows
    tc_cfg.write_text(json.dumps({**json.loads(tc_cfg.read_text()), "tokenizer_class": "PreTrainedTokenizerFast"}))
    tc_dir.mkdir(parents=True, exist_ok=True)
    for li in range(tcs.n_layers):
        save_file(
            {
                "W_enc": tcs.W_enc[li].cpu().contiguous(),
                "W_dec": tcs.W_dec[li].cpu().contiguous(),
                "b_enc": tcs.b_enc[li].cpu(),
                "b_dec": tcs.b_dec[li].cpu(),
                "activation_function.threshold": tcs.threshold[li].cpu(),
            },
            str(tc_dir / f"layer_{li}.safetensors"),
        )
    (tc_dir / "config.yaml").write_text(
        f"model_kind: transcoder_set\nfeature_input_hook: {tcs.feature_input_hook}\n"
        f"feature_output_hook: {tcs.feature_output_hook}\nscan: {tcs.scan}\n"
    )
    return model_dir, tc_dir


def gemma2_shaped(
    device: str = "cuda",
    *,
    layers: int = 26,
    d: int = 2304,
    d_mlp: int = 9216,
    heads: int = 8,
    kv_heads: int = 4,
    head_dim: int = 256,
    vocab: int = 256000,
    n_tc: int = 16384,
    n_tokens: int = 16,
    max_feature_nodes: int = 7500,
    l0: int = 64,
    reps: int = 2,
    ref_site: Path | None = None,
    with_reference: bool = False,
) -> str:
    """Random Gemma-2-shaped model + JumpReLU PLTs (about `l0` features per token and layer).

    Defaults: Gemma-2-2B's shape, 16,384 features per layer, 16 tokens, 7,500 feature nodes."""
    from tokenizers import Tokenizer, models
    from transformers import AutoModelForCausalLM, Gemma2Config, PreTrainedTokenizerFast

    from circuit_serve.tracing.transcoders import TranscoderSet

    cfg = Gemma2Config(
        vocab_size=vocab,
        hidden_size=d,
        intermediate_size=d_mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        query_pre_attn_scalar=head_dim,
        sliding_window=4096,
        final_logit_softcapping=30.0,
        attn_logit_softcapping=50.0,
        max_position_embeddings=8192,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager").eval()
    g = torch.Generator(device=device).manual_seed(0)
    tokens = torch.randint(3, vocab, (n_tokens,), generator=g, device=device).cpu()
    tokens[0] = 2

    def randn(*shape):
        return torch.randn(*shape, generator=g, device=device)

    tcs = TranscoderSet(
        kind="plt",
        W_enc=[torch.nn.functional.normalize(randn(n_tc, d), dim=1) for _ in range(layers)],
        b_enc=[torch.zeros(n_tc, device=device) for _ in range(layers)],
        W_dec=[randn(n_tc, d) * d**-0.5 for _ in range(layers)],
        b_dec=[torch.zeros(d, device=device) for _ in range(layers)],
        activation="jumprelu",
        feature_input_hook="ln2.hook_normalized",
        feature_output_hook="hook_mlp_out",
        threshold=[torch.zeros(n_tc, device=device) for _ in range(layers)],
        scan="bench-gemma2-shaped",
        identity="random",
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0, "<eos>": 1, "<bos>": 2}, unk_token="<pad>")),
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
    )
    rm = ReplacementModel.from_hf(model, tok, tcs, model_id="random-gemma2-shaped")
    rec = rm.record(tokens)
    for li in range(layers):  # thresholds: about l0 features per token fire
        pre = tcs.pre_activations(li, rec.x_in[li][1:]).float()
        tcs.threshold[li].fill_(float(torch.quantile(pre.flatten(), 1 - l0 / n_tc)))
    cuda = device.startswith("cuda")
    lines, run_times = [], []
    for rep in range(reps):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        graph = rm.attribute(tokens, max_feature_nodes=max_feature_nodes, batch_size=256)
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        run_times.append(dt)
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if cuda else "n/a (CPU)"
        est = rm.estimate_memory(n_tokens, graph.settings, n_active=graph.n_active, n_logits=graph.n_logits) / 2**30
        lines.append(
            f"| Gemma-2-shaped L={layers} d={d} n_tc={n_tc}, {n_tokens} tokens, max_feature_nodes "
            f"{max_feature_nodes} (run {rep + 1}, {device}) | {graph.n_active} active / {graph.n_selected} "
            f"selected | {dt:.2f} s | peak GPU memory {peak} (model + transcoders + graph); estimate "
            f"{est:.2f} GiB | {json.dumps({k: round(v, 3) for k, v in graph.timings.items()})} |"
        )
    print("\n".join(lines), flush=True)
    if not with_reference:
        return "\n".join(lines)
    best = min(run_times)
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        t = time.perf_counter()
        model_dir, tc_dir = save_shaped(model, tok, tcs, tmp)
        saved = time.perf_counter() - t
        ours = _Saved(
            graph.active_features.cpu(),
            graph.selected_features.cpu(),
            graph.logit_token_ids.cpu(),
            graph.adjacency().cpu(),
        )
        del rm, model, tcs, rec, graph
        if cuda:
            torch.cuda.empty_cache()
        Z, info = run_reference_shaped(
            model_dir,
            tc_dir,
            tokens.tolist(),
            device=device,
            reps=reps,
            max_feature_nodes=max_feature_nodes,
            site=ref_site,
            tmp=tmp,
        )
    if Z is None:
        lines.append(f"| circuit-tracer 0.5.0 on the same graph | {info} |")
        return "\n".join(lines)
    agree = agreement(ours, Z, limited=True)
    ref_t = min(info["times"])
    lines.append(
        f"| circuit-tracer 0.5.0 (nnsight backend, float32, {device}; files written in {saved:.0f} s, "
        f"loaded in {info['load']:.0f} s; {info['versions']}) | {ref_t:.2f} s (runs "
        f"{', '.join(f'{x:.2f}' for x in info['times'])}) | peak GPU memory {info['peak'] / 2**30:.2f} GiB | "
        f"ratio this engine / reference {best / ref_t:.3f} | {agree} |"
    )
    return "\n".join(lines)


@dataclass
class _Saved:
    """A graph's parts kept on the CPU for `agreement` after the model is freed."""

    active_features: torch.Tensor
    selected_features: torch.Tensor
    logit_token_ids: torch.Tensor
    adj: torch.Tensor

    def adjacency(self) -> torch.Tensor:
        return self.adj


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref-python", default="/work/ref-venv/bin/python")
    ap.add_argument("--ref-scripts", default="/work/shared/reference")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "circuit-serve-bench")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "attribution.md")
    ap.add_argument("--gpu-gemma2-2b", action="store_true", help="time the Gemma-2-2B-shaped config on CUDA")
    ap.add_argument("--shaped-smoke", action="store_true", help="the same code path, tiny shape, on the CPU")
    ap.add_argument(
        "--ref-site",
        type=Path,
        default=None,
        help="with --gpu-gemma2-2b/--shaped-smoke: circuit-tracer's packages (a dir or .tgz) to put first "
        "on the reference subprocess's PYTHONPATH",
    )
    ap.add_argument("--no-reference", action="store_true", help="with --gpu-gemma2-2b: this engine only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.gpu_gemma2_2b:
        print(gemma2_shaped("cuda", ref_site=args.ref_site, with_reference=not args.no_reference))
        return 0
    if args.shaped_smoke:
        print(
            gemma2_shaped(
                "cpu",
                layers=4,
                d=256,
                d_mlp=512,
                heads=4,
                kv_heads=2,
                head_dim=64,
                vocab=1000,
                n_tc=2048,
                max_feature_nodes=300,
                l0=32,
                reps=1,
                ref_site=args.ref_site,
                with_reference=True,
            )
        )
        return 0
    args.workdir.mkdir(parents=True, exist_ok=True)
    have_ref = Path(args.ref_python).exists() and (Path(args.ref_scripts) / "oracle.py").exists()
    if not have_ref:
        print(f"reference venv or scripts not found ({args.ref_python}); timing this engine only")
        args.ref_python = None
    rows = []
    load_before = os.getloadavg()[0]
    for cfg in make_models(args, args.workdir):
        tokens, g, ours = run_ours(cfg, args.reps)
        ref_t, agree = None, "reference not run"
        if have_ref:
            with tempfile.TemporaryDirectory() as tmp:
                Z, ref_times = run_reference(cfg, tokens, args, Path(tmp))
            ref_t = min(ref_times)
            agree = agreement(g, Z, cfg.max_feature_nodes is not None)
        ratio = f"{min(ours) / ref_t:.3f}" if ref_t else "n/a"
        rows.append(
            f"| {cfg.name} | {len(tokens)} | {g.n_active} / {g.n_selected} | "
            f"{ref_t if ref_t is None else f'{ref_t:.3f} s'} | {min(ours):.3f} s | {ratio} | {agree} |"
        )
        print(rows[-1], flush=True)
    ts = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after (shared machine)"
    text = (
        f"""# Attribution benchmark

Written by `bench/attribution.py` on {ts}: {platform.machine()}, {os.cpu_count()} CPUs visible, {load};
torch {torch.__version__} with {args.threads} thread(s) on both sides, float32, CPU. Prompt:
"{PROMPT}" (BOS prepended). Best of {args.reps} runs each, model loading excluded. Reference:
circuit-tracer 0.5.0 (TransformerLens backend) in its own venv, same model files, tokens and
settings (max_n_logits 10, desired_logit_prob 0.95). Ratio = this engine / reference (target <= 0.333).

| configuration | tokens | active / selected features | reference | this engine | ratio | graphs |
|---|---|---|---|---|---|---|
"""
        + "\n".join(rows)
        + """

The Gemma-2-2B-shaped GPU run (`--gpu-gemma2-2b`: 26 layers, d_model 2304, 16,384-feature JumpReLU
PLTs, 16 tokens, max_feature_nodes 7500) needs a CUDA device; none was lent to the session that
wrote this file, so it has not been run.
"""
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
