"""A real model's shape on the CPU: Llama-3.2-1B-shaped random model + 16 sparse PLTs, served.

    .venv/bin/python bench/real_shape.py [--ref-python /work/refvenv/bin/python] [--workdir DIR]
    .venv/bin/python bench/real_shape.py --smoke        # the same code path at a tiny shape

1. Build (cached in --workdir): a random-weight Llama with Llama-3.2-1B's layer shapes (16 layers,
   d_model 2048, 32 heads / 8 KV heads of 64, MLP 8192, tied embeddings, 128,256-token synthetic
   word-level tokenizer, max_position_embeddings 1024), stored in bfloat16; 16 per-layer
   transcoders of 8,192 features (bfloat16, ReLU-thresholded JumpReLU + W_skip, thresholds set on
   the model's own residual stream so that about --l0 features fire per token, as in published
   sets), read at hook_resid_mid and written at mlp.hook_out.
2. Transcoder memory: resident set size of loading the set lazily and eagerly (two subprocesses).
3. First start of `circuit-serve serve` (bfloat16, CPU, fresh --cache-dir: the weight files are
   hashed), its peak RSS (VmHWM of the server and vLLM's engine core process), generation tokens/s (sequential and
   concurrent greedy streams), one 16-token graph with max_feature_nodes 1000 through the server.
4. Second start with the same --cache-dir (file identities reused): start-up time.
5. After the server has stopped: circuit-tracer 0.5.0 (nnsight backend, same files, bfloat16,
   same tokens and settings) on the same graph, in its own venv; ratio = server / reference.
Writes bench/results/real_shape.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "server"))
sys.path.insert(0, str(ROOT / "client"))

from circuit_serve.launch import start_server, stop_on_sigterm  # noqa: E402
from circuit_serve.process_memory import tree_status_kib  # noqa: E402

SHAPE = dict(layers=16, d=2048, heads=32, kv_heads=8, head_dim=64, d_mlp=8192, vocab=128256, n_tc=8192, l0=64)
SMOKE = dict(layers=2, d=128, heads=4, kv_heads=2, head_dim=32, d_mlp=256, vocab=1000, n_tc=512, l0=16)
N_TOKENS, MAX_FEATURE_NODES = 16, 1000
ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_LOGGING_LEVEL": "WARNING",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
}


def build(out: Path, s: dict) -> tuple[Path, Path]:
    """The model directory and transcoder directory (skipped when already built)."""
    model_dir, tc_dir = out / "model", out / "transcoders"
    if (tc_dir / "config.yaml").exists():
        _tokenizer_class_for_the_reference(model_dir)
        return model_dir, tc_dir
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    words = ["<pad>", "<eos>", "<bos>"] + [f"w{i}" for i in range(s["vocab"] - 3)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    cfg = LlamaConfig(
        vocab_size=s["vocab"],
        hidden_size=s["d"],
        intermediate_size=s["d_mlp"],
        num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"],
        num_key_value_heads=s["kv_heads"],
        head_dim=s["head_dim"],
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        rope_theta=500000.0,
        bos_token_id=2,
        eos_token_id=1,
        pad_token_id=0,
        rms_norm_eps=1e-5,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    with torch.no_grad():  # a residual stream that grows like a trained model's (std-0.02 init)
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.02)
    model_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(model_dir))
    fast.save_pretrained(str(model_dir))
    # thresholds from the model's own transcoder inputs (resid_mid) on 64 random tokens
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, s["vocab"], (1, 64), generator=g)
    ids[0, 0] = 2
    mids: list[torch.Tensor] = []
    hooks = [
        layer.post_attention_layernorm.register_forward_pre_hook(lambda m, a: mids.append(a[0][0, 1:].float()))
        for layer in model.model.layers
    ]
    with torch.no_grad():
        model(input_ids=ids)
    for h in hooks:
        h.remove()
    del model
    tc_dir.mkdir(parents=True, exist_ok=True)
    F, d = s["n_tc"], s["d"]
    for li, x in enumerate(mids):
        W = torch.nn.functional.normalize(torch.randn(F, d, generator=g), dim=1)
        pre = x @ W.T  # (63, F)
        thr = float(torch.quantile(pre.flatten()[:: max(1, pre.numel() // 1_000_000)], 1 - s["l0"] / F))
        tensors = {
            "W_enc": W,
            "W_dec": torch.randn(F, d, generator=g) * (0.5 * float(x.std()) / d**0.5),
            "b_enc": torch.zeros(F),
            "b_dec": torch.zeros(d),
            "activation_function.threshold": torch.full((F,), thr),
            "W_skip": torch.randn(d, d, generator=g) * (0.1 / d**0.5),
        }
        save_file(
            {k: v.to(torch.bfloat16).contiguous() for k, v in tensors.items()}, str(tc_dir / f"layer_{li}.safetensors")
        )
    (tc_dir / "config.yaml").write_text(
        "model_kind: transcoder_set\nfeature_input_hook: hook_resid_mid\n"
        "feature_output_hook: mlp.hook_out\nscan: bench-real-shape\n"
    )
    _tokenizer_class_for_the_reference(model_dir)
    return model_dir, tc_dir


def _tokenizer_class_for_the_reference(model_dir: Path) -> None:
    """transformers 5 writes `TokenizersBackend`; the reference's transformers 4.57 needs a 4.x class name."""
    p = model_dir / "tokenizer_config.json"
    cfg = json.loads(p.read_text())
    if cfg.get("tokenizer_class") != "PreTrainedTokenizerFast":
        p.write_text(json.dumps({**cfg, "tokenizer_class": "PreTrainedTokenizerFast"}, indent=2))


MEM_PROBE = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[1])
from circuit_serve.process_memory import status_kib
from circuit_serve.tracing import load_transcoders
def rss():
    return status_kib('self', 'VmRSS')['VmRSS'] * 1024
before = rss()
tcs = load_transcoders(sys.argv[2], dtype=torch.bfloat16, lazy=sys.argv[3] == 'lazy')
held = [*tcs.W_enc, *tcs.b_enc, *tcs.W_dec, *tcs.b_dec, *(tcs.threshold or []), *(tcs.W_skip or [])]
for t in held:  # safetensors tensors are memory-mapped: count the pages a graph touches
    if isinstance(t, torch.Tensor):
        t.sum()
print('RESULT ' + json.dumps({'rss': rss() - before, 'held': tcs.resident_bytes()}))
"""


def transcoder_memory(tc_dir: Path) -> dict[str, dict]:
    out = {}
    for mode in ("lazy", "eager"):
        p = subprocess.run(
            [sys.executable, "-c", MEM_PROBE, str(ROOT / "server"), str(tc_dir), mode],
            capture_output=True,
            text=True,
            check=True,
        )
        out[mode] = json.loads(next(x for x in p.stdout.splitlines() if x.startswith("RESULT "))[7:])
    return out


def peak_rss(pid: int) -> int:
    """Sum of the peak RSS (VmHWM) of `pid` and its descendants (vLLM's engine core is a child process), bytes."""
    return tree_status_kib(pid, "VmHWM")["VmHWM"] * 1024


def timed_start(model_dir: Path, flags: list[str]):
    t = time.perf_counter()
    server = start_server(model_dir, [*flags, "--log-level", "WARNING"], log_prefix="real-shape-")
    return server, server.target, time.perf_counter() - t


def generation_rates(target: str, vocab: int, *, tokens: int, streams: int) -> tuple[float, float]:
    from circuit_client import CircuitClient, Sampling

    prompts = [" ".join(f"w{(7 * i + 13 * j) % (vocab - 3)}" for j in range(12)) for i in range(streams)]
    with CircuitClient(target, timeout=600) as client:
        client.generate(prompts[0], Sampling(max_new_tokens=4, temperature=0))  # warm-up
        t = time.perf_counter()
        n = len(client.generate(prompts[0], Sampling(max_new_tokens=tokens, temperature=0, ignore_eos=True)).token_ids)
        sequential = n / (time.perf_counter() - t)
        counts = [0] * streams

        def one(i):
            counts[i] = len(
                client.generate(prompts[i], Sampling(max_new_tokens=tokens, temperature=0, ignore_eos=True)).token_ids
            )

        threads = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        concurrent = sum(counts) / (time.perf_counter() - t)
    return sequential, concurrent


def graph_through_server(target: str, tokens: list[int]):
    from circuit_client.attribution import AttributionClient, AttributionSettings

    with AttributionClient(target, timeout=3600) as graphs:
        t = time.perf_counter()
        events = []
        result = graphs.attribute(
            None,
            AttributionSettings(max_feature_nodes=MAX_FEATURE_NODES, batch_size=256),
            prompt_token_ids=tokens,
            on_event=events.append,
            output="json",
        )
        return time.perf_counter() - t, result, list(events[0].token_ids)


REF_RUNNER = r"""
import json, os, sys, time
import torch
cfg = json.loads(sys.argv[1])
torch.set_num_threads(cfg["threads"])
from circuit_tracer import attribute
from circuit_tracer.utils.caching import load_transcoders_from_cache
from circuit_tracer.replacement_model.replacement_model_nnsight import NNSightReplacementModel
dt = torch.bfloat16
parent, name = os.path.split(os.path.abspath(cfg["transcoders"]))
t0 = time.perf_counter()
tcs, _ = load_transcoders_from_cache(name, cache_dir=parent, device=torch.device("cpu"), dtype=dt,
                                     lazy_encoder=False, lazy_decoder=True)
model = NNSightReplacementModel.from_pretrained_and_transcoders(os.path.abspath(cfg["model"]), tcs,
                                                                device=torch.device("cpu"), dtype=dt)
load = time.perf_counter() - t0
t = time.perf_counter()
g = attribute(torch.tensor(cfg["tokens"]), model, max_n_logits=10, desired_logit_prob=0.95, batch_size=256,
              max_feature_nodes=cfg["max_feature_nodes"])
dt_graph = time.perf_counter() - t
peak = int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]) * 1024
print("RESULT " + json.dumps({"load": load, "graph": dt_graph, "n_active": int(len(g.active_features)),
                              "n_selected": int(len(g.selected_features)), "peak_rss": peak}))
"""


def reference(args, model_dir: Path, tc_dir: Path, tokens: list[int]) -> dict | str:
    if not (args.ref_python and Path(args.ref_python).exists()):
        return f"not run: no reference venv at {args.ref_python}"
    spec = dict(
        model=str(model_dir),
        transcoders=str(tc_dir),
        tokens=tokens,
        max_feature_nodes=MAX_FEATURE_NODES,
        threads=args.threads,
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PYTHONPATH", None)
    p = subprocess.run([args.ref_python, "-c", REF_RUNNER, json.dumps(spec)], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        why = " ".join(p.stderr.strip().splitlines()[-3:])[-600:] or "no error message (killed?)"
        return f"failed with exit status {p.returncode}: {why}"
    return json.loads(next(x for x in p.stdout.splitlines() if x.startswith("RESULT "))[7:])


def main() -> int:
    stop_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "circuit-serve-real-shape")
    ap.add_argument("--ref-python", default="/work/refvenv/bin/python")
    ap.add_argument(
        "--threads", type=int, default=2, help="torch threads of the reference (the server uses torch's default)"
    )
    ap.add_argument("--smoke", action="store_true", help="tiny shape, same code path (no results file)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "real_shape.md")
    args = ap.parse_args()
    s = SMOKE if args.smoke else SHAPE
    work = args.workdir / ("smoke" if args.smoke else "full")
    os.environ.update(ENV)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "server"), str(ROOT / "client")])
    load_before = os.getloadavg()[0]

    t = time.perf_counter()
    model_dir, tc_dir = build(work, s)
    print(f"built/found {model_dir} and {tc_dir} ({time.perf_counter() - t:.0f}s)", flush=True)
    mem = transcoder_memory(tc_dir)
    print("transcoder memory:", mem, flush=True)

    cache = work / "identity-cache"
    for f in cache.glob("identities/*"):
        f.unlink()  # the first start hashes every weight file
    from circuit_serve.tracing.identity import file_identity

    weights = sorted([*model_dir.glob("*.safetensors"), *tc_dir.glob("*.safetensors")])
    t = time.perf_counter()
    file_identity(weights)
    hash_s = time.perf_counter() - t
    scratch = work / "identity-scratch"
    file_identity(weights, scratch)
    t = time.perf_counter()
    file_identity(weights, scratch)
    cached_s = time.perf_counter() - t
    size = sum(p.stat().st_size for p in weights)
    print(
        f"hashing {size / 2**30:.2f} GiB of weights {hash_s:.1f}s; from the identity cache {cached_s * 1e3:.1f} ms",
        flush=True,
    )
    flags = [
        "--transcoders",
        str(tc_dir),
        "--dtype",
        "bfloat16",
        "--enforce-eager",
        "--max-model-len",
        "1024",
        "--kv-cache-gib",
        "1",
        "--attribution-memory-budget-gib",
        "4",
        "--attribution-max-feature-nodes",
        str(MAX_FEATURE_NODES),
        "--cache-dir",
        str(cache),
    ]
    tokens = [2] + [3 + (97 * i) % (s["vocab"] - 3) for i in range(N_TOKENS - 1)]
    server, target, first_start = timed_start(model_dir, flags)
    try:
        print(f"first start {first_start:.1f}s", flush=True)
        seq, conc = generation_rates(target, s["vocab"], tokens=32 if not args.smoke else 8, streams=4)
        print(f"generation {seq:.1f} tok/s sequential, {conc:.1f} tok/s with 4 streams", flush=True)
        graph_s, result, graph_tokens = graph_through_server(target, tokens)
        print(f"graph through the server {graph_s:.1f}s", flush=True)
        rss1 = peak_rss(server.pid)
    finally:
        server.stop()
    server, target, second_start = timed_start(model_dir, flags)
    try:
        rss2 = peak_rss(server.pid)
    finally:
        server.stop()
    print(f"second start {second_start:.1f}s", flush=True)
    if not args.smoke:  # written now too, in case the reference does not finish
        write(args, s, locals(), "not finished when this file was written (the run was stopped)")
    ref = reference(args, model_dir, tc_dir, graph_tokens)
    print("reference:", ref, flush=True)
    if args.smoke:
        return 0
    write(args, s, locals(), ref)
    return 0


def write(args, s: dict, m: dict, ref) -> None:
    """bench/results/real_shape.md from the measurements `m` (main's locals) and the reference's result."""
    first_start, second_start, hash_s, cached_s, size = (
        m[k] for k in ("first_start", "second_start", "hash_s", "cached_s", "size")
    )
    rss1, rss2, mem, seq, conc, graph_s, result, load_before = (
        m[k] for k in ("rss1", "rss2", "mem", "seq", "conc", "graph_s", "result", "load_before")
    )

    front = result.frontend()
    n_nodes, n_links = len(front["nodes"]), len(front["links"])
    gib = 2**30
    if isinstance(ref, dict):
        ref_row = (
            f"| circuit-tracer 0.5.0 (nnsight backend, bfloat16, {args.threads} threads), after the server "
            f"stopped | {ref['graph']:.1f} s (loading {ref['load']:.1f} s excluded; {ref['n_active']} active / "
            f"{ref['n_selected']} selected; peak RSS {ref['peak_rss'] / gib:.2f} GiB) |\n"
            f"| ratio server / reference (graph) | {graph_s / ref['graph']:.2f} |"
        )
    else:
        ref_row = f"| circuit-tracer 0.5.0 | {ref} |"
    ts = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    text = f"""# A real model's shape on the CPU

Written by `bench/real_shape.py` on {ts}: {platform.machine()}, {os.cpu_count()} CPUs visible (shared machine;
load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after). Model: random Llama with Llama-3.2-1B's
shapes (16 layers, d_model 2048, 32 heads / 8 KV heads of 64, MLP 8192, tied embeddings, 128,256-token
word-level tokenizer, max_position_embeddings 1024), bfloat16. Transcoders: 16 PLTs of 8,192 features
(bfloat16, JumpReLU + W_skip, about {s["l0"]} features per token), decoders read lazily. Server:
`circuit-serve serve --dtype bfloat16 --enforce-eager --max-model-len 1024 --kv-cache-gib 1` on vLLM-cpu
0.32.0 (its engine core runs in a child process: peak RSS below is the sum of both processes' peaks;
weights are memory-mapped, so pages count once touched).

| measurement | value |
|---|---|
| first start (fresh --cache-dir: weight files hashed) to SERVING | {first_start:.1f} s |
| second start (file identities from --cache-dir) to SERVING | {second_start:.1f} s (ratio {second_start / first_start:.2f}) |
| sha256 of the {size / gib:.2f} GiB of weight files (what a start without the cache does) / the same identities from the cache | {hash_s:.1f} s / {cached_s * 1e3:.1f} ms |
| peak RSS (VmHWM, server + engine core): after generation and the graph / second start at SERVING | {rss1 / gib:.2f} GiB / {rss2 / gib:.2f} GiB |
| transcoder set, lazy decoders: tensors held / RSS growth once every held tensor is read | {mem["lazy"]["held"] / gib:.2f} GiB / {mem["lazy"]["rss"] / gib:.2f} GiB |
| transcoder set, eager decoders: tensors held / RSS growth once every held tensor is read | {mem["eager"]["held"] / gib:.2f} GiB / {mem["eager"]["rss"] / gib:.2f} GiB |
| generation, one greedy stream of 32 tokens | {seq:.1f} tokens/s |
| generation, 4 concurrent greedy streams of 32 tokens | {conc:.1f} tokens/s |
| one 16-token graph, max_feature_nodes 1000, through the server (client wall time) | {graph_s:.1f} s ({n_nodes} nodes, {n_links} links after pruning) |
{ref_row}
"""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
