"""ReplacementModel: a Hugging Face model plus its transcoders, ready to attribute.

It holds the HF model as loaded (no weight copies, no TransformerLens / nnsight) and the
transcoder set, validates requests, and exposes:

1. `tokenize(prompt)`: the model's tokenizer with its own special tokens (as generation does),
   with BOS prepended when the tokenizer does not add one.
2. `attribute(tokens, ...)`: the attribution graph (attribution.py).
3. `feature_activations(tokens)`: the same sparse activations the graph would use.
4. `estimate_memory(n_tokens, settings)`: the request's peak working memory (memory.py), an
   upper bound before the forward pass; `attribute` checks the exact estimate (real number of
   active features) against `memory_budget_bytes` before allocating the edge matrix.

One forward pass at a time runs on the shared model (a lock), so threads may share one instance.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from circuit_serve.domain.chat import chat_token_ids
from circuit_serve.domain.errors import InvalidRequest
from circuit_serve.tracing.architecture import Architecture, describe
from circuit_serve.tracing.attribution import run_attribution
from circuit_serve.tracing.graph import AttributionGraph
from circuit_serve.tracing.hub import resolve_model_dir
from circuit_serve.tracing.identity import file_identity
from circuit_serve.tracing.local_model import PromptRecord, compute_activations, record
from circuit_serve.tracing.memory import estimate_bytes, largest_prompt
from circuit_serve.tracing.qk import check_edges
from circuit_serve.tracing.settings import AttributionSettings
from circuit_serve.tracing.targets import TargetSpec
from circuit_serve.tracing.transcoders import TranscoderSet, load_transcoders

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class FeatureActivations:
    """Sparse transcoder activations of one token sequence (position 0 zeroed, as in graphs)."""

    indices: torch.Tensor  # (n, 3) long: layer, pos, feature (layer-major, then pos, feature)
    values: torch.Tensor  # (n,) float32
    n_layers: int
    n_pos: int
    d_transcoder: int
    layer_offsets: list[int]  # rows of layer l are indices[layer_offsets[l]:layer_offsets[l+1]]

    def layer(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(positions, features, values) of one layer."""
        lo, hi = self.layer_offsets[layer], self.layer_offsets[layer + 1]
        return self.indices[lo:hi, 1], self.indices[lo:hi, 2], self.values[lo:hi]

    def to_sparse(self) -> torch.Tensor:
        """torch sparse COO tensor (n_layers, n_pos, d_transcoder)."""
        shape = (self.n_layers, self.n_pos, self.d_transcoder)
        return torch.sparse_coo_tensor(self.indices.T, self.values, shape, check_invariants=True).coalesce()


def _dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise InvalidRequest(f"dtype {dtype!r} is not one of {sorted(DTYPES)}", field="dtype")
    return DTYPES[dtype]


def model_identity(model_dir: str | Path, cache_dir: Path | None = None) -> str:
    """sha256 of the checkpoint's weight files and config (cached by size and mtime in `cache_dir`)."""
    d = Path(model_dir)
    files = sorted(list(d.glob("*.safetensors")) + list(d.glob("*.bin")) + [d / "config.json"])
    return file_identity([f for f in files if f.is_file()], cache_dir)


def _tensor_identity(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


RESIDENT_SLACK = 768 << 20  # process memory that is neither weights nor counted working tensors


class ReplacementModel:
    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        transcoders: TranscoderSet,
        *,
        model_id: str | None = None,
        memory_budget_bytes: int | None = None,
        expected_l0: int = 256,
        max_prompt_tokens: int | None = None,
        spill_dir: str | None = None,
    ):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        self.arch: Architecture = describe(model)
        transcoders.check_matches(self.arch.n_layers, self.arch.d_model, f"model {self.model_name or 'given'}")
        dev = self.arch.embed.weight.device
        if transcoders.device != dev:
            transcoders.to(device=dev)
        self.transcoders = transcoders
        self.model_id = model_id or _tensor_identity(model)
        self.transcoder_id = transcoders.identity
        self.memory_budget_bytes = memory_budget_bytes
        self.expected_l0 = expected_l0
        self.spill_dir = spill_dir  # where rows beyond row_memory_bytes go (None: the system's temp dir)
        self.max_prompt_tokens = max_prompt_tokens or self.arch.max_positions or None
        self._lock = threading.Lock()

    @property
    def forward_lock(self) -> threading.Lock:
        """Held around every forward pass of `model` (one at a time): `record`'s hooks must see only
        their own pass, so another user of the model (steering) holds it for each of its passes."""
        return self._lock

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        transcoders: TranscoderSet | str | Path,
        *,
        dtype: torch.dtype | str = torch.float32,
        device: torch.device | str = "cpu",
        lazy_decoders: bool = True,
        identity_cache: Path | None = None,
        **kwargs,
    ) -> ReplacementModel:
        """Load an HF checkpoint (directory or repo id; eager attention) and a transcoder set
        (directory or repo id). `identity_cache`: where file hashes are kept between starts."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dt = _dtype(dtype)
        model_dir = resolve_model_dir(model_dir)
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dt, attn_implementation="eager").to(device)
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        if not isinstance(transcoders, TranscoderSet):
            transcoders = load_transcoders(
                transcoders, dtype=dt, device=device, lazy=lazy_decoders, identity_cache=identity_cache
            )
        return cls(model, tok, transcoders, model_id=model_identity(model_dir, identity_cache), **kwargs)

    @classmethod
    def from_hf(cls, model: torch.nn.Module, tokenizer, transcoders: TranscoderSet, **kwargs) -> ReplacementModel:
        """Wrap an already-loaded HF causal LM (its weights are used in place)."""
        return cls(model, tokenizer, transcoders, **kwargs)

    @property
    def model_name(self) -> str:
        return str(getattr(self.model.config, "_name_or_path", "") or "")

    # -- tokens ---------------------------------------------------------------------------
    def bos_id(self) -> int | None:
        tok = self.tokenizer
        for cand in (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, *tok.all_special_ids):
            if cand is not None:
                return int(cand)
        return None

    def tokenize(self, prompt: str) -> list[int]:
        """Token ids as generation sees them, starting with a special (BOS) token."""
        if not isinstance(prompt, str):
            raise InvalidRequest("prompt must be text", field="prompt")
        ids = list(self.tokenizer(prompt, add_special_tokens=True).input_ids)
        return self._with_bos(ids)

    def chat_tokens(self, messages) -> list[int]:
        """Token ids of chat messages under the model's chat template (as generation renders them)."""
        return chat_token_ids(self.tokenizer, messages)

    def _with_bos(self, ids: list[int]) -> list[int]:
        if not ids or ids[0] not in set(self.tokenizer.all_special_ids):
            bos = self.bos_id()
            if bos is not None:
                ids = [bos, *ids]
        return ids

    def decode_token(self, t: int) -> str:
        return self.tokenizer.decode([int(t)])

    def decode_tokens(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def check_tokens(self, tokens: str | Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, str | None]:
        """Validate a prompt or token ids; returns (tokens (P,) long with BOS first, prompt text)."""
        prompt = None
        if isinstance(tokens, str):
            prompt = tokens
            if not tokens.strip():
                raise InvalidRequest("the prompt is empty; give some text to attribute", field="prompt")
            ids = self.tokenize(tokens)
        else:
            ids = [int(x) for x in (tokens.flatten().tolist() if isinstance(tokens, torch.Tensor) else tokens)]
            ids = self._with_bos(ids) if ids else ids
        V = self.arch.lm_head.weight.shape[0]
        if len(ids) < 2:
            raise InvalidRequest("the prompt is empty; give at least one token after BOS", field="prompt")
        bad = [x for x in ids if not 0 <= x < V]
        if bad:
            raise InvalidRequest(f"token ids {bad[:5]} are outside the vocabulary [0, {V})", field="token_ids")
        if self.max_prompt_tokens and len(ids) > self.max_prompt_tokens:
            raise InvalidRequest(
                f"the prompt has {len(ids)} tokens (with BOS) but the model accepts at most "
                f"{self.max_prompt_tokens}; shorten it",
                field="prompt",
            )
        return torch.tensor(ids, dtype=torch.long), prompt

    # -- memory ---------------------------------------------------------------------------
    def estimate_memory(
        self,
        n_tokens: int,
        settings: AttributionSettings | None = None,
        *,
        n_active: int | None = None,
        n_logits: int | None = None,
        dense_rows: bool = False,
    ) -> int:
        """Estimated peak working memory in bytes of attributing `n_tokens` tokens."""
        s = settings or AttributionSettings()
        return estimate_bytes(
            self.arch,
            self.transcoders,
            n_tokens,
            s,
            n_active=n_active,
            n_logits=n_logits,
            expected_l0=self.expected_l0,
            work_bytes=self.work_bytes(),
            dense_rows=dense_rows,
        )

    def row_memory_bytes(self, n_tokens: int, settings: AttributionSettings, n_active: int, n_logits: int) -> int:
        """How much of the row store stays in memory before rows are spilled to disk: what the
        budget (4 GiB without one) leaves beyond the estimate of everything else, the model's and
        transcoders' tensors and RESIDENT_SLACK (interpreter, allocator)."""
        rest = self.estimate_memory(n_tokens, settings, n_active=n_active, n_logits=n_logits)
        weights = sum(p.numel() * p.element_size() for p in self.model.parameters())
        held = weights + self.transcoders.resident_bytes() + RESIDENT_SLACK
        return max(0, (self.memory_budget_bytes or 4 << 30) - rest - held)

    def work_bytes(self, *_) -> int:
        """Working memory for one transposed pass: an eighth of the budget (512 MiB without one),
        and on a GPU at most half of what is free on it."""
        work = (self.memory_budget_bytes or 4 << 30) // 8
        dev = self.arch.embed.weight.device
        if dev.type == "cuda":
            free, _ = torch.cuda.mem_get_info(dev)
            work = min(work, free // 2)
        return max(work, 1 << 20)

    def check_memory(
        self, n_tokens: int, settings: AttributionSettings, *, n_active: int | None = None, dense_rows=False, **kw
    ) -> None:
        """Refuse (InvalidRequest) when the estimate exceeds the budget, naming the largest prompt
        that fits at this prompt's features per token (n_active: 0 before the forward pass, a lower
        bound; the real count after it; None: the `expected_l0` bound)."""
        if self.memory_budget_bytes is None:
            return
        need = self.estimate_memory(n_tokens, settings, n_active=n_active, dense_rows=dense_rows, **kw)
        if need <= self.memory_budget_bytes:
            return
        rate = None if n_active is None else n_active / max(n_tokens - 1, 1)  # features per token

        def fits(n: int) -> bool:
            na = None if rate is None else int(rate * max(n - 1, 0))
            return (
                self.estimate_memory(n, settings, n_active=na, dense_rows=dense_rows, **kw) <= self.memory_budget_bytes
            )

        best = largest_prompt(fits, n_tokens)
        raise InvalidRequest(
            f"this graph needs about {need / 2**20:.0f} MiB but the budget is "
            f"{self.memory_budget_bytes / 2**20:.0f} MiB; the largest prompt that fits these settings is "
            f"about {best} tokens: lower max_feature_nodes or shorten the prompt",
            field="max_feature_nodes",
        )

    # -- the work -------------------------------------------------------------------------
    def record(
        self, tokens: torch.Tensor, should_stop: Callable[[], bool] | None = None, keep_mid: Sequence[int] = ()
    ) -> PromptRecord:
        with self._lock:
            return record(self.model, self.arch, self.transcoders, tokens, should_stop=should_stop, keep_mid=keep_mid)

    def attribute(
        self,
        tokens: str | Sequence[int] | torch.Tensor,
        *,
        max_n_logits: int = 10,
        desired_logit_prob: float = 0.95,
        max_feature_nodes: int | None = None,
        batch_size: int = 256,
        targets: Sequence[TargetSpec] | None = None,
        progress: Callable[[str, float], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        node_threshold: float = 0.8,
        edge_threshold: float = 0.98,
        head_loadings: bool = False,
        qk_edges: Sequence[tuple[int, int, int, int]] = (),
        dense_rows: bool | None = None,
    ) -> AttributionGraph:
        """Attribution graph of the next-token prediction after `tokens` (text or ids).
        `dense_rows`: True/False force the dense or the streamed rows; None picks dense rows where
        they fit the memory budget (see `run_attribution`)."""
        settings = AttributionSettings(
            max_n_logits=max_n_logits,
            desired_logit_prob=desired_logit_prob,
            max_feature_nodes=max_feature_nodes,
            batch_size=batch_size,
            node_threshold=node_threshold,
            edge_threshold=edge_threshold,
            head_loadings=head_loadings,
            qk_edges=tuple(qk_edges),
        ).validate()
        ids, prompt = self.check_tokens(tokens)
        check_edges(settings.qk_edges, self.arch.n_layers, self.arch.n_heads, len(ids))
        # Checked twice: here, before the forward pass, the part of the estimate that does not
        # depend on the features (recorded patterns and tensors, the forward pass, one backward
        # batch: what grows fastest with the prompt), and in phase 3 with the real number of active
        # features. A sparsity guess (`expected_l0`) would refuse graphs that fit.
        self.check_memory(len(ids), settings, n_active=0, dense_rows=bool(dense_rows))  # None: streamed fits
        return run_attribution(
            self,
            ids,
            settings,
            targets=targets,
            progress=progress,
            should_stop=should_stop,
            prompt=prompt,
            dense_rows=dense_rows,
        )

    def feature_activations(self, tokens: str | Sequence[int] | torch.Tensor) -> FeatureActivations:
        ids, _ = self.check_tokens(tokens)
        acts = compute_activations(self.transcoders, self.record(ids))
        return FeatureActivations(
            indices=acts.indices,
            values=acts.values.float().cpu(),
            n_layers=self.arch.n_layers,
            n_pos=len(ids),
            d_transcoder=self.transcoders.d_transcoder,
            layer_offsets=acts.layer_offsets,
        )
