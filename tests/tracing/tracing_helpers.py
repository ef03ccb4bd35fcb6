"""Tiny random models, transcoder directories and an independent frozen model for the tests.

`FrozenHF` re-runs the real Hugging Face forward pass with (1) attention patterns replaced by
the prompt's recorded patterns (a registered attention function), (2) every RMSNorm dividing by
its recorded denominator, (3) each MLP output replaced by `skip(x_in) + injected vector`. That
is the local replacement model computed by HF's own modules, independent of the engine's
transposed pass; interventions on it give ground truth for single edges and completeness.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

ARCHS = ("llama", "gemma2", "qwen3")
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "reference"
PROMPT_IDS = [2, 17, 43, 8, 91, 23, 55, 4, 61, 30]  # BOS first; 10 positions (> Gemma's window of 4)


def tiny_tokenizer(vocab: int):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<eos>", "<bos>"] + [f"w{i}" for i in range(vocab - 3)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")


def build_model(arch: str, *, seed: int = 0, vocab: int = 96, d: int = 32, layers: int = 3):
    from transformers import AutoModelForCausalLM, Gemma2Config, LlamaConfig, Qwen3Config

    common = dict(
        vocab_size=vocab,
        hidden_size=d,
        intermediate_size=2 * d,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=d // 4,
        max_position_embeddings=64,
        bos_token_id=2,
        eos_token_id=1,
        pad_token_id=0,
    )
    if arch == "llama":
        cfg = LlamaConfig(**common, tie_word_embeddings=False)
    elif arch == "gemma2":
        cfg = Gemma2Config(
            **common,
            sliding_window=4,
            query_pre_attn_scalar=d // 4,
            final_logit_softcapping=30.0,
            attn_logit_softcapping=50.0,
            tie_word_embeddings=True,
        )
    else:
        cfg = Qwen3Config(**common, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, attn_implementation="eager")
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if "norm" in name:
                p.copy_((0.0 if arch == "gemma2" else 1.0) + 0.2 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_((d**-0.5 if arch == "gemma2" else 1.0) * torch.randn(p.shape, generator=g))
            elif p.ndim == 2:
                p.copy_(p.shape[1] ** -0.5 * torch.randn(p.shape, generator=g))
            else:
                p.zero_()
    return model.eval()


# -- transcoders in the on-disk format ---------------------------------------------------------

CASES = {
    # name: (arch, kind, activation, skip, input hook, output hook)
    "llama-plt-relu-skip": ("llama", "plt", "relu", True, "hook_resid_mid", "mlp.hook_out"),
    "gemma2-plt-jumprelu": ("gemma2", "plt", "jumprelu", False, "ln2.hook_normalized", "hook_mlp_out"),
    "qwen3-plt-topk": ("qwen3", "plt", "topk", True, "mlp.hook_in", "mlp.hook_out"),
    "llama-clt-relu": ("llama", "clt", "relu", False, "hook_resid_mid", "hook_mlp_out"),
    "gemma2-clt-jumprelu": ("gemma2", "clt", "jumprelu", False, "ln2.hook_normalized", "mlp.hook_out"),
    "llama-clt-relu-skip": ("llama", "clt", "relu", True, "hook_resid_mid", "mlp.hook_out"),  # W_skip_{i}
}


@torch.no_grad()
def transcoder_inputs(model, tokens: torch.Tensor, in_hook: str) -> list[torch.Tensor]:
    """Per layer (P, d) transcoder inputs on `tokens` from a clean forward pass."""
    gemma = model.config.model_type == "gemma2"
    out: list[torch.Tensor] = []
    hs = []
    for layer in model.model.layers:
        norm2 = layer.pre_feedforward_layernorm if gemma else layer.post_attention_layernorm

        def fn(m, args, o, norm2=norm2):
            x = args[0][0].float()
            if in_hook == "hook_resid_mid":
                out.append(x)
            elif in_hook == "ln2.hook_normalized":
                eps = getattr(norm2, "eps", getattr(norm2, "variance_epsilon", None))
                out.append(x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))
            else:
                out.append(o[0].float())

        hs.append(norm2.register_forward_hook(fn))
    try:
        model(input_ids=tokens[None])
    finally:
        for h in hs:
            h.remove()
    return out


def write_transcoders(
    directory: Path,
    model,
    case: str,
    tokens: torch.Tensor,
    *,
    d_tc: int = 64,
    seed: int = 0,
    density: float = 0.12,
    top_k: int = 6,
) -> Path:
    arch, kind, act, skip, in_hook, out_hook = CASES[case]
    L, d = model.config.num_hidden_layers, model.config.hidden_size
    g = torch.Generator().manual_seed(seed + 7)
    X = transcoder_inputs(model, tokens, in_hook)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = {
        "model_kind": "transcoder_set" if kind == "plt" else "cross_layer_transcoder",
        "feature_input_hook": in_hook,
        "feature_output_hook": out_hook,
        "scan": f"test-{case}",
    }
    if act == "topk":
        cfg.update(activation_function="topk", top_k=top_k)
    (directory / "config.yaml").write_text(yaml.safe_dump(cfg))
    for li in range(L):
        W = torch.randn(d_tc, d, generator=g)
        W = W / W.norm(dim=1, keepdim=True)
        pre = X[li][1:] @ W.T
        q = torch.quantile(pre, 1 - density, dim=0)
        thr = None
        if act == "relu":
            b = -q
        elif act == "jumprelu":
            b = 0.1 * torch.randn(d_tc, generator=g)
            thr = (q + b).clamp(min=0.05)
        else:
            b = 0.05 * torch.randn(d_tc, generator=g)
        b_dec = 0.1 * torch.randn(d, generator=g)
        if kind == "plt":
            sd = {"W_enc": W, "W_dec": 0.5 * torch.randn(d_tc, d, generator=g) / d**0.5, "b_enc": b, "b_dec": b_dec}
            if thr is not None:
                sd["activation_function.threshold"] = thr
            if skip:
                sd["W_skip"] = 0.3 * torch.randn(d, d, generator=g) / d**0.5
            save_file({k: v.contiguous() for k, v in sd.items()}, str(directory / f"layer_{li}.safetensors"))
        else:
            enc = {f"W_enc_{li}": W, f"b_enc_{li}": b, f"b_dec_{li}": b_dec}
            if thr is not None:
                enc[f"threshold_{li}"] = thr
            if skip:  # applied as x @ W_skip_i (circuit-tracer's CLT orientation)
                enc[f"W_skip_{li}"] = 0.3 * torch.randn(d, d, generator=g) / d**0.5
            save_file({k: v.contiguous() for k, v in enc.items()}, str(directory / f"W_enc_{li}.safetensors"))
            dec = 0.5 * torch.randn(d_tc, L - li, d, generator=g) / d**0.5
            save_file({f"W_dec_{li}": dec.contiguous()}, str(directory / f"W_dec_{li}.safetensors"))
    return directory


# -- the frozen model computed by HF's own modules ---------------------------------------------


class FrozenHF:
    """The prompt's local replacement model, run by the HF modules (see module docstring)."""

    def __init__(self, model, tcs, tokens: torch.Tensor):
        from transformers import AttentionInterface

        self.model, self.tcs, self.tokens = model, tcs, tokens
        self.gemma = model.config.model_type == "gemma2"
        self.L = model.config.num_hidden_layers
        layers = model.model.layers
        self.norms = []  # (module, kind) of every residual-path norm
        for layer in layers:
            self.norms += [layer.input_layernorm, layer.post_attention_layernorm]
            if self.gemma:
                self.norms += [layer.pre_feedforward_layernorm, layer.post_feedforward_layernorm]
        self.norms.append(model.model.norm)
        AttentionInterface.register("test_frozen_pattern", FrozenHF._attention)  # reads FrozenHF._active
        self.clean = self._clean_pass()

    # one clean forward pass: norm denominators, patterns, transcoder inputs, MLP outputs
    @torch.no_grad()
    def _clean_pass(self) -> dict:
        m = self.model
        rec = {"scale": {}, "pattern": {}, "x_mid": [None] * self.L, "y": [None] * self.L, "x_in": [None] * self.L}
        hs = []
        for norm in self.norms:

            def fn(mod, args, norm=norm):
                x = args[0].float()
                eps = getattr(norm, "eps", getattr(norm, "variance_epsilon", None))
                rec["scale"][id(norm)] = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)[0]

            hs.append(norm.register_forward_pre_hook(fn))
        for li, layer in enumerate(m.model.layers):
            hs.append(
                layer.self_attn.register_forward_hook(lambda mod, a, o, li=li: rec["pattern"].__setitem__(li, o[1][0]))
            )
        y_mod, xin_fn = self._hook_points()
        for li in range(self.L):
            hs.append(y_mod(li).register_forward_hook(lambda mod, a, o, li=li: rec["y"].__setitem__(li, o[0].float())))
            hs.append(
                self._norm2(li).register_forward_hook(
                    lambda mod, a, o, li=li: rec["x_in"].__setitem__(
                        li, xin_fn(li, a[0][0].float(), o[0].float(), None)
                    )
                )
            )
        fin = {}
        hs.append(m.model.norm.register_forward_hook(lambda mod, a, o: fin.update(h=o[0].float())))
        try:
            out = m(input_ids=self.tokens[None])
        finally:
            for h in hs:
                h.remove()
        rec["final_hidden"] = fin["h"]
        rec["logits"] = out.logits[0, -1].float()
        with torch.no_grad():
            rec["x0"] = m.model.embed_tokens(self.tokens[None])[0].float()
        return rec

    def _norm2(self, li):
        layer = self.model.model.layers[li]
        return layer.pre_feedforward_layernorm if self.gemma else layer.post_attention_layernorm

    def _hook_points(self):
        """(module whose output is the transcoder's output hook, x_in from norm2's input/output)."""
        layers = self.model.model.layers
        out_hook, in_hook = self.tcs.feature_output_hook, self.tcs.feature_input_hook

        def y_mod(li):
            if self.gemma and out_hook == "hook_mlp_out":
                return layers[li].post_feedforward_layernorm
            return layers[li].mlp

        def xin(li, x_mid, norm_out, scale):
            if in_hook == "hook_resid_mid":
                return x_mid
            if in_hook == "mlp.hook_in":
                return norm_out
            s = scale if scale is not None else self._scale(self._norm2(li), x_mid)
            return x_mid * s

        return y_mod, xin

    def _scale(self, norm, x):
        eps = getattr(norm, "eps", getattr(norm, "variance_epsilon", None))
        return torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)

    _active: FrozenHF | None = None  # the instance whose run() is in progress

    @staticmethod
    def _attention(module, query, key, value, attention_mask, **kw):
        from transformers.models.llama.modeling_llama import repeat_kv

        A = FrozenHF._active.clean["pattern"][module.layer_idx]  # (H, P, P)
        v = repeat_kv(value, module.num_key_value_groups)  # (B, H, P, dh)
        out = torch.matmul(A[None].to(v.dtype), v)
        return out.transpose(1, 2).contiguous(), A

    @torch.no_grad()
    def run(self, x0: torch.Tensor, inj: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """x0 (B, P, d) embeddings, inj (B, L, P, d) added at each MLP output (replacing the MLP).

        Returns per-layer transcoder inputs [(B, P, d)] and the final-norm output (B, P, d)."""
        m = self.model
        gemma = self.gemma
        saved = []
        for norm in self.norms:
            s = self.clean["scale"][id(norm)]  # (P, 1)

            def fwd(x, norm=norm, s=s):
                w = norm.weight.float()
                return (x.float() * s * ((1 + w) if gemma else w)).to(x.dtype)

            saved.append((norm, norm.forward))
            norm.forward = fwd
        y_mod, xin_fn = self._hook_points()
        xins: list = [None] * self.L
        hs = []
        for li in range(self.L):

            def norm2_hook(mod, a, o, li=li):
                x_mid = a[0].float()
                xins[li] = xin_fn(li, x_mid, o.float(), self.clean["scale"][id(self._norm2(li))])

            def replace(mod, a, o, li=li):
                out = inj[:, li].to(o.dtype).clone()
                if self.tcs.W_skip is not None:
                    out = out + xins[li] @ self.tcs.W_skip[li].T
                return out

            hs.append(self._norm2(li).register_forward_hook(norm2_hook))
            hs.append(y_mod(li).register_forward_hook(replace))
            if gemma and self.tcs.feature_output_hook == "mlp.hook_out":
                pass  # the frozen post-feedforward norm then scales the replaced MLP output
        fin = {}
        hs.append(m.model.norm.register_forward_hook(lambda mod, a, o: fin.update(h=o.float())))
        old_impl = m.config._attn_implementation
        m.config._attn_implementation = "test_frozen_pattern"
        FrozenHF._active = self
        try:
            m(inputs_embeds=x0)
        finally:
            FrozenHF._active = None
            m.config._attn_implementation = old_impl
            for h in hs:
                h.remove()
            for norm, f in saved:
                norm.forward = f
        return xins, fin["h"]


def save_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj))


_BUILT: dict[str, tuple] = {}


def built_case(case: str, root: Path):
    """(ReplacementModel, FrozenHF, tokens) for a CASES entry, built once per session."""
    from circuit_serve.tracing import ReplacementModel, load_transcoders

    if case not in _BUILT:
        arch = CASES[case][0]
        model = build_model(arch, seed=sum(map(ord, case)) % 1000)
        tokens = torch.tensor(PROMPT_IDS)
        tdir = write_transcoders(root / case, model, case, tokens)
        tcs = load_transcoders(tdir, dtype=torch.float32, device="cpu")
        rm = ReplacementModel.from_hf(model, tiny_tokenizer(model.config.vocab_size), tcs, model_id=f"test-{case}")
        _BUILT[case] = (rm, FrozenHF(model, tcs, tokens), tokens)
    return _BUILT[case]
