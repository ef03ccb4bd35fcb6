"""The whole demo-model pipeline: data -> model -> transcoders -> labels -> circuit check -> manifest.

    run_pipeline(out_dir, seed=0)

writes, under out_dir:
    model/           config.json, model.safetensors, generation_config.json, tokenizer.json,
                     tokenizer_config.json (HF format, loadable by transformers and vLLM)
    transcoders/     config.yaml + layer_{i}.safetensors (JumpReLU per-layer transcoders)
    labels.json      [{layer, index, label, kind, selectivity, answer_share, top}] (see labels.py)
    manifest.json    file hashes, settings, timings and the measured numbers

Deterministic from the seed on a given machine: every random draw is seeded, torch runs with a
fixed thread count and deterministic algorithms.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch

from circuit_serve.demo import activations, labels, train_model, transcoders
from circuit_serve.demo.data import World
from circuit_serve.demo.install import sha256
from circuit_serve.demo.tokenizer import save_tokenizer

log = logging.getLogger(__name__)

N_THREADS = 1  # 2 threads on 2 shared cores ran 9x slower (OpenMP barriers under contention)
TC_TRAIN_ROWS = 3000  # packed rows whose MLP activations train the transcoders
TC_EVAL_ROWS = 300  # fresh rows for FVU / L0
LABEL_ROWS = 200


def file_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): sha256(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }


def _setup(seed: int) -> None:
    torch.set_num_threads(N_THREADS)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)


def _stream_rows(world: World, vocab: dict[str, int], n: int, seq_len: int, seed: int):
    return train_model.pack(world, vocab, n, seq_len, world.training_sentences(seed))


def run_pipeline(
    out_dir: str | Path,
    *,
    seed: int = 0,
    model_settings: train_model.ModelSettings | None = None,
    tc_settings: transcoders.TranscoderSettings | None = None,
    circuit: bool = True,
) -> dict:
    """Train everything into `out_dir` (replaced); return the manifest."""
    ms = model_settings or train_model.ModelSettings()
    ts = tc_settings or transcoders.TranscoderSettings()
    _setup(seed)
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    model_dir = out / "model"
    model_dir.mkdir(parents=True)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    # 1. data + tokenizer
    world = World(seed)
    world.check_vocabulary()
    tok = save_tokenizer(world.vocabulary(), model_dir)
    vocab = tok.get_vocab()

    # 2. model
    t0 = time.perf_counter()
    model, evaluation, best_step, history = train_model.train_model(world, vocab, ms, seed)
    model.save_pretrained(str(model_dir))
    model.generation_config.save_pretrained(str(model_dir))
    timings["model_s"] = round(time.perf_counter() - t0, 1)
    log.info("model: step %d %s (%.0fs)", best_step, evaluation, timings["model_s"])

    # 3. transcoders
    t0 = time.perf_counter()
    rows, answer = _stream_rows(world, vocab, TC_TRAIN_ROWS, ms.seq_len, seed + 101)
    train_io = activations.collect(model, rows, answer)
    tcs = transcoders.train_transcoders(train_io, ts, seed)
    transcoders.save_transcoders(tcs, out / "transcoders", scan=f"circuit-serve-demo-s{seed}")
    rows, answer = _stream_rows(world, vocab, TC_EVAL_ROWS, ms.seq_len, seed + 202)
    eval_io = activations.collect(model, rows, answer)
    fvu, l0, fvu_answer = [], [], []
    for li, tc in enumerate(tcs):
        f, n = transcoders.fvu_and_l0(tc, eval_io.x[li], eval_io.y[li])
        fa, _ = transcoders.fvu_and_l0(tc, eval_io.x[li][eval_io.answer], eval_io.y[li][eval_io.answer])
        fvu.append(round(f, 5))
        l0.append(round(n, 3))
        fvu_answer.append(round(fa, 5))
    timings["transcoders_s"] = round(time.perf_counter() - t0, 1)
    log.info("transcoders: fvu %s l0 %s answer-fvu %s (%.0fs)", fvu, l0, fvu_answer, timings["transcoders_s"])

    # 4. labels
    t0 = time.perf_counter()
    _write_labels(out, model, tcs, world, vocab, seed, ms.seq_len)
    timings["labels_s"] = round(time.perf_counter() - t0, 1)

    timings["total_s"] = round(time.perf_counter() - t_all, 1)
    manifest = {
        "seed": seed,
        **{k: round(v, 4) for k, v in evaluation.items() if k.endswith("accuracy")},
        "transcoder_fvu": fvu,
        "transcoder_l0": l0,
        "transcoder_fvu_answer_positions": fvu_answer,
        "circuit_recovery_rate": None,
        "ablation_dependence_rate": None,
        "ablation_control_rate": None,
        "selected_step": best_step,
        "training_history": history,
        "settings": {
            "model": asdict(ms),
            "transcoders": asdict(ts),
            "transcoder_train_rows": TC_TRAIN_ROWS,
            "transcoder_eval_rows": TC_EVAL_ROWS,
            "label_rows": LABEL_ROWS,
            "n_threads": N_THREADS,
            "n_countries": len(world.countries),
            "vocab_size": len(vocab),
        },
        "timings": timings,
        "environment": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
        "files": file_hashes(out),
    }
    write_manifest(out, manifest)
    if circuit:
        manifest = add_circuit_rates(out)
    return manifest


def _write_labels(out: Path, model, tcs, world: World, vocab: dict[str, int], seed: int, seq_len: int) -> None:
    label_rows, label_answer = _stream_rows(world, vocab, LABEL_ROWS, seq_len, seed + 303)
    corpus = labels.corpus(world, vocab, label_rows, label_answer)
    labels.write_labels(labels.label_features(model, tcs, corpus, world, vocab), out / "labels.json")


def relabel(out_dir: str | Path) -> dict:
    """Step 4 alone on an existing OUT_DIR (its trained model and transcoders, unchanged): rewrite
    labels.json and the manifest's file hashes and `labels_s`; return the manifest."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = Path(out_dir)
    manifest = json.loads((out / "manifest.json").read_text())
    seed = manifest["seed"]
    _setup(seed)
    model = AutoModelForCausalLM.from_pretrained(str(out / "model"), dtype=torch.float32).eval()
    vocab = AutoTokenizer.from_pretrained(str(out / "model")).get_vocab()
    t0 = time.perf_counter()
    _write_labels(
        out,
        model,
        transcoders.load_transcoders(out / "transcoders"),
        World(seed),
        vocab,
        seed,
        manifest["settings"]["model"]["seq_len"],
    )
    timings = manifest["timings"]
    timings["total_s"] = round(timings["total_s"] - timings["labels_s"], 1)
    timings["labels_s"] = round(time.perf_counter() - t0, 1)
    timings["total_s"] = round(timings["total_s"] + timings["labels_s"], 1)
    manifest["files"] = file_hashes(out)
    write_manifest(out, manifest)
    return manifest


def write_manifest(out: Path, manifest: dict) -> None:
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def add_circuit_rates(out_dir: str | Path) -> dict:
    """Step 5: measure the circuit with the attribution engine; update the manifest's rates."""
    from circuit_serve.demo.circuit import measure_circuit

    out = Path(out_dir)
    manifest = json.loads((out / "manifest.json").read_text())
    _setup(manifest["seed"])
    t0 = time.perf_counter()
    result = measure_circuit(out / "model", out / "transcoders", seed=manifest["seed"])
    manifest.update(result.rates())
    manifest["circuit_prompts"] = result.n_prompts
    manifest["timings"]["circuit_s"] = round(time.perf_counter() - t0, 1)
    manifest["timings"]["total_s"] = round(manifest["timings"]["total_s"] + manifest["timings"]["circuit_s"], 1)
    log.info("circuit: %s on %d prompts", result.rates(), result.n_prompts)
    write_manifest(out, manifest)
    return manifest
