"""The GPU memory plan against hand computations from the real configs' numbers (no weights).

gemma-2-2b (google/gemma-2-2b config.json): vocab 256000, hidden 2304, intermediate 9216, 26 layers,
8 heads, 4 KV heads, head_dim 256, tied embeddings: 2,614,341,888 parameters. GemmaScope 16k
transcoders: 26 x params.npz (W_enc, W_dec 16384 x 2304, b_enc, threshold 16384, b_dec 2304), held
in memory (an .npz cannot be sliced). Llama-3.2-1B: vocab 128256, hidden 2048, intermediate 8192,
16 layers, 32 heads, 8 KV heads, head_dim 64, tied: 1,235,814,400 parameters. Its 131k skip
transcoders: 16 x (W_enc, W_dec 131072 x 2048, W_skip 2048 x 2048, b_enc, b_dec), ReLU, decoders
read lazily. Served in bfloat16 (2 bytes); max_model_len 8192; default attribution budget 8 GiB.
"""

from __future__ import annotations

from circuit_serve.memory_plan import GIB, ModelShape, TranscoderShape, plan_memory

GEMMA_2_2B = {
    "model_type": "gemma2",
    "vocab_size": 256000,
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "max_position_embeddings": 8192,
    "torch_dtype": "float32",
}
LLAMA_32_1B = {
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "max_position_embeddings": 131072,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
}
GEMMASCOPE_16K = TranscoderShape("plt", 26, 16384, 2304, skip=False, threshold=True, lazy_decoder=False)
LLAMA_131K = TranscoderShape("plt", 16, 131072, 2048, skip=True, threshold=False, lazy_decoder=True)
CARD_80, CARD_24 = 80 * GIB, 24 * GIB  # 85,899,345,920 and 25,769,803,776 bytes
CTX_AND_RESERVE = 2 * 512 * 2**20  # server CUDA context + allocator reserve
VLLM_CTX = 512 * 2**20


def test_parameter_counts_are_the_published_ones():
    assert ModelShape.from_config(GEMMA_2_2B).n_params == 2_614_341_888
    assert ModelShape.from_config(LLAMA_32_1B).n_params == 1_235_814_400


def test_gemma_2_2b_with_gemmascope_16k():
    m = ModelShape.from_config(GEMMA_2_2B)
    p80 = plan_memory(m, GEMMASCOPE_16K, card_bytes=CARD_80)
    c = p80.components
    assert c["vLLM weights"] == c["replacement model weights"] == 5_228_683_776  # 2,614,341,888 x 2
    # 26 x (2 x 16384 x 2304 + 2 x 16384 + 2304) = 1,963,846,144 elements x 2 bytes
    assert c["transcoders"] == 3_927_692_288
    assert c["attribution budget"] == 8_589_934_592
    assert c["server CUDA context + reserve"] == CTX_AND_RESERVE
    # 8192 x (4 x 2304 + 2 x 9216) x 2 + 256 x 256000 x 4
    assert c["vLLM activations"] == 452_984_832 + 262_144_000
    # 80 GiB - (5,228,683,776 + 3,927,692,288 + 8,589,934,592 + 1,073,741,824) = 67,079,293,440 for vLLM
    assert abs(p80.gpu_memory_utilization - 67_079_293_440 / CARD_80) < 1e-12
    assert c["vLLM KV cache"] == 67_079_293_440 - 5_228_683_776 - 715_128_832 - VLLM_CTX == 60_598_609_920
    assert p80.fits
    assert sum(c.values()) == CARD_80

    # 24 GiB: vLLM gets 6,949,751,296; its KV cache 469,067,776 < one 8192-token sequence
    # (8192 x 2 x 26 x 4 x 256 x 2 = 872,415,232 bytes)
    p24 = plan_memory(m, GEMMASCOPE_16K, card_bytes=CARD_24)
    assert p24.components["vLLM KV cache"] == 469_067_776
    assert not p24.fits
    assert "(0.81 GiB)" in p24.reason and "attribution-memory-budget-gib" in p24.reason
    # a 4 GiB attribution budget frees 4 GiB for the KV cache: 4,764,035,072 bytes
    p24b = plan_memory(m, GEMMASCOPE_16K, card_bytes=CARD_24, attribution_budget_bytes=4 * GIB)
    assert p24b.fits and p24b.components["vLLM KV cache"] == 469_067_776 + 4 * GIB


def test_llama_32_1b_with_the_131k_set():
    m = ModelShape.from_config(LLAMA_32_1B)
    p80 = plan_memory(m, LLAMA_131K, card_bytes=CARD_80)
    c = p80.components
    assert c["vLLM weights"] == c["replacement model weights"] == 2_471_628_800  # 1,235,814,400 x 2
    # 16 x (131072 x 2048 + 131072 + 2048 + 2048 x 2048) = 4,364,206,080 elements x 2 (decoders lazy)
    assert c["transcoders"] == 8_728_412_160
    assert c["vLLM activations"] == 402_653_184 + 131_334_144  # 8192 x 24576 x 2 + 256 x 128256 x 4
    assert c["vLLM KV cache"] == 85_899_345_920 - 20_863_717_376 - 2_471_628_800 - 533_987_328 - VLLM_CTX
    assert p80.fits

    # 24 GiB: vLLM share 4,906,086,400; KV cache 1,363,599,360 >= 8192 x 32,768 = 268,435,456
    p24 = plan_memory(m, LLAMA_131K, card_bytes=CARD_24)
    assert p24.components["vLLM KV cache"] == 1_363_599_360
    assert p24.fits
    # the same set with every decoder in memory adds 16 x 131072 x 2048 x 2 = 8 GiB: refused
    eager = TranscoderShape("plt", 16, 131072, 2048, skip=True, lazy_decoder=False)
    p24e = plan_memory(m, eager, card_bytes=CARD_24)
    assert p24e.components["transcoders"] == 8_728_412_160 + 8_589_934_592
    assert not p24e.fits and "transcoders" in p24e.reason


def test_without_transcoders_vllm_gets_the_whole_card():
    p = plan_memory(ModelShape.from_config(LLAMA_32_1B), None, card_bytes=CARD_24)
    assert p.gpu_memory_utilization == 1.0 and p.fits
    assert "REFUSED" not in p.render() and "gpu_memory_utilization" in p.render()


def test_serving_plan_reads_the_config_and_transcoder_headers_and_sets_vllm_share():
    """The start-up wiring on the reference fixture (tiny Llama + PLT), as if on a 4 GiB card."""
    import argparse

    import pytest

    from circuit_serve.attribution.loading import PlanRefused, apply_plan, plan_for_serving, serving_dtype
    from circuit_serve.config.serve import ServeConfig
    from tests.tracing.tracing_helpers import FIXTURES

    parser = argparse.ArgumentParser()
    ServeConfig.add_arguments(parser)
    fx = FIXTURES / "llama"
    args = parser.parse_args(
        [
            "--model",
            str(fx / "model"),
            "--transcoders",
            str(fx / "transcoders"),
            "--attribution-memory-budget-gib",
            "0.25",
        ]
    )
    config = ServeConfig.from_args(args)
    assert plan_for_serving(config, card_bytes=4 * GIB, device="cpu") is None  # nothing shared on the CPU
    plan = plan_for_serving(config, card_bytes=4 * GIB, device="cuda")
    # tiny Llama: 3 layers, d 32, 128 features with W_skip, ReLU; float32 checkpoint served in bfloat16
    assert serving_dtype("auto", {"torch_dtype": "float32"}, "cuda") == "bfloat16"
    assert plan.components["transcoders"] == 3 * (128 * 32 + 128 + 32 + 32 * 32) * 2
    assert plan.components["attribution budget"] == GIB // 4
    engine = apply_plan(config.engine, plan)
    assert engine.gpu_memory_utilization == round(plan.gpu_memory_utilization, 4) < 1
    big = ServeConfig.from_args(
        parser.parse_args(
            [
                "--model",
                str(fx / "model"),
                "--transcoders",
                str(fx / "transcoders"),
                "--attribution-memory-budget-gib",
                "4",
            ]
        )
    )
    with pytest.raises(PlanRefused, match="lower --attribution-memory-budget-gib"):
        apply_plan(big.engine, plan_for_serving(big, card_bytes=4 * GIB, device="cuda"))


def test_replacement_model_dtype_follows_the_serving_dtype_on_a_gpu():
    from circuit_serve.attribution.loading import resolve_dtype
    from circuit_serve.config.attribution import AttributionConfig
    from tests.tracing.tracing_helpers import FIXTURES

    model = FIXTURES / "llama" / "model"  # a float32 checkpoint
    auto = AttributionConfig()
    assert resolve_dtype(auto, "auto", "cpu", model) == "float32"
    assert resolve_dtype(auto, "auto", "cuda", model) == "bfloat16"  # as vLLM serves a float32 checkpoint
    assert resolve_dtype(auto, "float16", "cuda", model) == "float16"
    assert resolve_dtype(AttributionConfig(dtype="float32"), "auto", "cuda", model) == "float32"


def test_memory_plan_command_prints_what_serve_would_do(capsys):
    from circuit_serve.cli import main
    from tests.tracing.tracing_helpers import FIXTURES

    fx = FIXTURES / "gemma2"
    args = ["memory-plan", "--model", str(fx / "model"), "--transcoders", str(fx / "transcoders")]
    assert main([*args, "--card-gib", "4", "--attribution-memory-budget-gib", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "GPU memory plan for a 4.0 GiB card" in out and "gpu_memory_utilization" in out and "fits:" in out
    assert main([*args, "--card-gib", "2", "--attribution-memory-budget-gib", "2"]) == 2
    assert "REFUSED" in capsys.readouterr().out
