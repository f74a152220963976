"""Hidden-state extraction with HuggingFace transformers (causal LMs and encoders).

How a batch runs (causal LMs):

- Token ids of a sample are `prefix ids + ids of (observation + tail)` (see `hsrl.llm.prompt`); samples are
  right-padded, so the shared prefix occupies the same columns in every row. With the prefix cache on (default), the
  prefix's keys/values are computed once per extractor and copied into each batch's `DynamicCache`; only the
  per-sample part runs. Position ids are `cumsum(attention_mask) - 1`, so padding never shifts a real token's
  position (left padding, `padding_side='left'`, is supported too, without the prefix cache).
- Layer states are captured with hooks on the chosen blocks only (no full `output_hidden_states` tuple): layer 0 is
  the first block's input (the embedding output), layer i the output of block i, the last layer the base model's
  `last_hidden_state` (after the final norm), i.e. exactly HF's `hidden_states` tuple (tested).
- Prompt-only (tokens = 1): one forward pass; 'last' pools the last prompt token, 'mean' the observation's tokens
  (the tokens whose character offsets overlap the observation in the rendered prompt; a token straddling the
  observation's edge counts).
- Generation (tokens = N > 1): an own decoding loop on the KV cache rather than `generate`: after the prefill, each
  step feeds the token just sampled, so the step's hidden states are *that token's own* states, the ones a prefill
  over prompt + generated text gives (`generate(output_hidden_states=True)` instead returns, at step j, the state of
  the position that predicted token j and never the last token's). The loop feeds the last generated token too,
  one step more than `generate`. A sample stops at its first end-of-sequence token, which is pooled with the tokens
  before it; later steps are masked out. The batch stops when all samples stopped or N tokens were generated.
- Sampling is per sample: each sample draws its uniforms from its own seed (spec.seed mixed with a per-sample
  seed, by default a hash of its observation text) and picks tokens by inverse CDF after temperature and top-p. So
  the same observation gives the same text and states whatever else is in its batch or how large it is (up to
  float ties). temperature = 0 is greedy.
- Re-extraction: one prefill over prompt + generated tokens (re-tokenized from the text, or ids given), pooled over
  the generated positions: equal to generation's states within float tolerance. Re-tokenizing text gives the
  generated ids back when the tokenizer encodes the decoded text to the same ids (true for the text a trained model
  writes, nearly always; random models write non-canonical token sequences, so pass `generated_ids` there).

Encoder models (MiniLM) run the whole prompt bidirectionally in one pass: prompt-only only.
"""

import inspect
from typing import Sequence

import numpy as np
import torch

from hsrl.llm.extractor import ExtractionResult, Extractor
from hsrl.llm.models import LoadedModel, load_model, model_for_spec
from hsrl.llm.pooling import pool, resolve_layer
from hsrl.llm.prompt import prompt_program
from hsrl.llm.spec import ExtractionSpec
from hsrl.llm.tokens import encode_prompts, eos_ids, prefix_ids, resolve_template_name, sample_uniforms


def _find_blocks(base) -> torch.nn.ModuleList:
    """The ModuleList of transformer blocks of a base model (the one as long as num_hidden_layers)."""
    n = base.config.get_text_config().num_hidden_layers
    lists = [m for m in base.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n]
    if not lists:
        raise ValueError(f"cannot find the {n} transformer blocks of {type(base).__name__}")
    return lists[0]


def _eos_ids(loaded: LoadedModel) -> list[int]:
    return eos_ids(getattr(loaded.model, "generation_config", None), loaded.tokenizer)


def sample_tokens(logits: torch.Tensor, uniforms: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """(B, V) logits, (B,) uniforms in [0, 1) -> (B,) token ids, by inverse CDF after temperature and top-p.

    Each row depends only on its own logits and uniform, so a sample's draw does not depend on its batch.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    cdf = sorted_probs.cumsum(dim=-1)
    keep = (cdf - sorted_probs) < top_p  # the smallest top set whose mass reaches top_p
    cdf = torch.where(keep, sorted_probs, 0.0).cumsum(dim=-1)
    target = uniforms.to(cdf) * cdf[:, -1]
    k = torch.searchsorted(cdf, target[:, None], right=True)
    k = torch.minimum(k, keep.sum(dim=-1, keepdim=True) - 1)  # a uniform rounded up to 1.0 stays in the top set
    return order.gather(1, k).squeeze(1)


class TransformersExtractor(Extractor):
    """Extractor on a transformers model. See the module docstring for how batches, layers and sampling work.

    spec: what to extract; `self.spec` is it resolved ('auto' template and dtype filled in).
    device: None = CUDA when available, else CPU.
    batch_size: samples per forward pass (`extract` takes any number; batches are formed after sorting by length).
    prefix_cache: reuse the shared prefix's keys/values (causal models; results equal the uncached ones).
    padding_side: 'right' (default) or 'left' ('left' runs without the prefix cache).
    model: an already loaded model to share between extractors (must be the spec's model).
    """

    def __init__(
        self,
        spec: ExtractionSpec,
        *,
        device: str | None = None,
        batch_size: int = 16,
        prefix_cache: bool = True,
        padding_side: str = "right",
        model: LoadedModel | None = None,
    ):
        if spec.reads_images or spec.backend != "transformers":
            raise ValueError(
                f"TransformersExtractor reads text with transformers; spec.input={spec.input!r}, "
                f"spec.backend={spec.backend!r} needs another backend (use hsrl.llm.make_extractor)"
            )
        model = model_for_spec(spec, model, load_model, device)
        if spec.generates and not model.causal:
            raise ValueError(
                f"{spec.model} is an encoder model ({', '.join(model.model.config.architectures or ['no LM head'])}): "
                f"it cannot generate; use tokens=1 (prompt-only)"
            )
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side={padding_side!r}; expected 'left' or 'right'")
        if padding_side == "left" and prefix_cache and model.causal:
            raise ValueError(
                "the shared-prefix cache needs right padding; pass prefix_cache=False with padding_side='left'"
            )
        template, version = resolve_template_name(spec, "chat" if model.causal else "short")
        self._bind(spec.replace(template=template, template_version=version, dtype=model.dtype), model,
                   model.model.base_model, batch_size, padding_side)
        self.template = prompt_program(self.spec).template(model.tokenizer)
        tok = model.tokenizer
        self._prefix_ids = prefix_ids(tok, self.template, model.causal)
        self.prefix_cache = bool(prefix_cache and model.causal and self._prefix_ids)
        self._prefix_kv = None

    def _bind(self, spec: ExtractionSpec, model: LoadedModel, base, batch_size: int, padding_side: str,
              blocks=None) -> None:
        """Attach the resolved spec and the loaded model (base model, its blocks, pad and end-of-sequence ids)."""
        self.spec = spec
        self.loaded = model
        self.tokenizer = model.tokenizer
        self.context_length = model.context_length
        self.hidden_size = model.hidden_size
        self.num_layers = model.num_layers
        for layer in self.spec.layers:
            resolve_layer(layer, self.num_layers)
        self.batch_size = int(batch_size)
        self.padding_side = padding_side
        self.device = torch.device(model.device)
        self._base = base
        self._blocks = _find_blocks(base) if blocks is None else blocks
        params = inspect.signature(base.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        tok = model.tokenizer
        self._pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        self._eos_ids = _eos_ids(model)
        self._eos = torch.tensor(self._eos_ids, dtype=torch.long, device=self.device)

    # ---- tokenization -------------------------------------------------------------------------------------------

    @property
    def prefix_tokens(self) -> int:
        """Tokens of the shared prefix (0 for encoders)."""
        return len(self._prefix_ids)

    def encode(self, observations: Sequence[str]) -> tuple[list[list[int]], np.ndarray]:
        """Prompt token ids per sample and the (B, 2) [start, end) token range of each observation in them."""
        return encode_prompts(self.loaded.tokenizer, self.template, self._prefix_ids, self.loaded.causal, observations)

    def _encode(self, texts, images):
        return self.encode(texts)

    # ---- model calls --------------------------------------------------------------------------------------------

    def _layout(self, rows: list[list[int]]):
        """Pad rows into (B, T) ids, bool mask and position ids; returns also each row's column offset."""
        B, T = len(rows), max(len(r) for r in rows)
        ids = torch.full((B, T), self._pad_id, dtype=torch.long)
        mask = torch.zeros((B, T), dtype=torch.bool)
        offsets = np.zeros(B, dtype=np.int64)
        for b, r in enumerate(rows):
            o = T - len(r) if self.padding_side == "left" else 0
            ids[b, o : o + len(r)] = torch.tensor(r, dtype=torch.long)
            mask[b, o : o + len(r)] = True
            offsets[b] = o
        pos = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
        return ids.to(self.device), mask.to(self.device), pos.to(self.device), offsets

    def _base_forward(self, layers: set[int], **kwargs):
        """Base-model forward with the blocks' states captured by hooks: ({layer: (B, T, H)}, base model output).

        Layer 0 is the first block's input, layer i < L block i's output, L the base model's last_hidden_state.
        """
        captured: dict[int, torch.Tensor] = {}
        handles = []
        L = self.num_layers

        def pre_hook(module, args, kwargs):
            captured[0] = args[0] if args else kwargs["hidden_states"]

        def make_hook(layer):
            def hook(module, args, output):
                captured[layer] = output[0] if isinstance(output, tuple) else output

            return hook

        for layer in layers:
            if layer == 0:
                handles.append(self._blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True))
            elif layer < L:
                handles.append(self._blocks[layer - 1].register_forward_hook(make_hook(layer)))
        try:
            out = self._base(**kwargs)
        finally:
            for h in handles:
                h.remove()
        if L in layers:
            captured[L] = out.last_hidden_state
        return captured, out

    def _forward(self, ids, mask, pos, cache, layers: set[int]):
        """Base-model forward; returns ({layer: (B, T, H) states}, last_hidden_state, cache)."""
        kwargs = {"input_ids": ids, "attention_mask": mask.long(), "position_ids": pos}
        if self.loaded.causal:
            kwargs.update({self._cache_kw: cache, "use_cache": cache is not None})
        captured, out = self._base_forward(layers, **kwargs)
        cache = getattr(out, self._cache_kw, None) if cache is not None else None
        return captured, out.last_hidden_state, cache

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.loaded.model.get_output_embeddings()(hidden).float()
        cap = getattr(self.loaded.model.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    def _new_cache(self, batch: int, config=None):
        """A DynamicCache for `batch` rows, holding the shared prefix when the prefix cache is on."""
        from transformers import DynamicCache

        config = config if config is not None else self.loaded.model.config
        if not self.prefix_cache:
            return DynamicCache(config=config)
        if self._prefix_kv is None:
            n = len(self._prefix_ids)
            ids = torch.tensor([self._prefix_ids], dtype=torch.long, device=self.device)
            mask = torch.ones_like(ids, dtype=torch.bool)
            pos = torch.arange(n, device=self.device)[None]
            _, _, cache = self._forward(ids, mask, pos, DynamicCache(config=config), set())
            self._prefix_kv = [(k, v) for k, v, *_ in cache]
        # update() concatenates, so each batch gets its own copy of the prefix and the stored one stays intact
        expanded = [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in self._prefix_kv]
        return DynamicCache(expanded, config=config)

    def _prefill(self, rows: list[list[int]], layers: set[int], keep_cache: bool):
        """Forward over padded rows. Returns (states, last_hidden, cache, mask, pos, offsets, first_column)."""
        ids, mask, pos, offsets = self._layout(rows)
        cache = self._new_cache(len(rows)) if self.loaded.causal and (keep_cache or self.prefix_cache) else None
        first = len(self._prefix_ids) if self.prefix_cache else 0  # columns held by the cache, not run here
        states, last, cache = self._forward(ids[:, first:], mask, pos[:, first:], cache, layers)
        return states, last, cache, mask, pos, offsets, first

    @staticmethod
    def _gather(states: torch.Tensor, starts: torch.Tensor, counts: torch.Tensor):
        """(B, T, H) states -> (B, K, H) states at columns starts[b] + k for k < counts[b], and the (B, K) mask."""
        K = int(counts.max())
        k = torch.arange(K, device=states.device)
        mask = k[None] < counts[:, None]
        cols = torch.where(mask, starts[:, None] + k[None], starts[:, None])
        picked = states.gather(1, cols[:, :, None].expand(-1, -1, states.shape[-1]))
        return picked, mask

    def _pooled_prefill(self, rows, ranges: np.ndarray, layers: set[int], want_tokens: bool):
        """Prefill and pool each row's token range [start, end) (row coordinates)."""
        states, _, _, _, _, offsets, first = self._prefill(rows, layers, keep_cache=False)
        starts = torch.as_tensor(offsets + ranges[:, 0] - first, device=self.device)
        counts = torch.as_tensor(ranges[:, 1] - ranges[:, 0], device=self.device)
        if bool((starts < 0).any()):
            raise AssertionError("pooled tokens fall inside the cached prefix")
        hidden, tokens = {}, {}
        for layer in layers:
            picked, mask = self._gather(states[layer], starts, counts)
            hidden[layer] = pool(picked, mask, self.spec.pooling)
            if want_tokens:
                tokens[layer] = picked
        return hidden, tokens, counts.cpu().numpy()

    def _decoding_loop(self, rows, uniforms: torch.Tensor, layers: set[int]):
        """Sample up to N tokens per row; returns (hidden, token states, gen ids (B, n), valid (B, n))."""
        B = len(rows)
        spec = self.spec
        _, last, cache, mask, pos, offsets, first = self._prefill(rows, set(), keep_cache=True)
        lengths = np.array([len(r) for r in rows])
        last_col = torch.as_tensor(offsets + lengths - 1, device=self.device)
        batch = torch.arange(B, device=self.device)
        logits = self._logits(last[batch, last_col - first])
        next_pos = pos[batch, last_col] + 1
        alive = torch.ones(B, dtype=torch.bool, device=self.device)
        steps: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
        tokens, valid = [], []
        for j in range(spec.tokens):
            tok = sample_tokens(logits, uniforms[:, j], spec.temperature, spec.top_p)
            tok = torch.where(alive, tok, self._pad_id)
            valid.append(alive)
            tokens.append(tok)
            mask = torch.cat([mask, alive[:, None]], dim=1)
            states, last, cache = self._forward(tok[:, None], mask, (next_pos + j)[:, None], cache, layers)
            for layer in layers:
                steps[layer].append(states[layer][:, 0])
            alive = alive & ~torch.isin(tok, self._eos)
            if j == spec.tokens - 1 or not bool(alive.any()):
                break
            logits = self._logits(last[:, 0])
        valid = torch.stack(valid, dim=1)
        hidden, token_states = {}, {}
        for layer in layers:
            seq = torch.stack(steps[layer], dim=1)
            hidden[layer] = pool(seq, valid, spec.pooling)
            token_states[layer] = seq
        return hidden, token_states, torch.stack(tokens, dim=1), valid

    # ---- public -------------------------------------------------------------------------------------------------

    def _run_prefill(self, rows, ranges, prompt_lengths, layers, want_tokens: bool) -> ExtractionResult:
        return self._run(rows, prompt_lengths, layers, want_tokens, ranges=ranges)

    def _run_generation(self, rows, prompt_lengths, layers, want_tokens: bool, keys: list[int]) -> ExtractionResult:
        """Own decoding loop; each sample draws (N,) uniforms from its own stream (spec.seed and its key)."""
        uniforms = sample_uniforms(self.spec.seed, self.spec.tokens, keys)
        return self._run(rows, prompt_lengths, layers, want_tokens, uniforms=uniforms)

    def _check_reextract(self) -> None:
        if not self.loaded.causal:
            raise ValueError(f"{self.spec.model} is an encoder model: there is no generated text to re-extract")

    def _run(self, rows, prompt_lengths, layers, want_tokens, ranges=None, uniforms=None) -> ExtractionResult:
        """Batch rows by length, run each batch, and assemble one result in the input order.

        ranges: per row, what `_pooled_prefill` pools (prompt-only and re-extraction); uniforms: (B, N) per-row
        sampling uniforms (generation). Exactly one is given.
        """
        asked, absolute = self._layers(layers)
        wanted = set(absolute.values())
        n = len(rows)
        order = np.argsort([len(r) for r in rows], kind="stable")
        hidden = {a: np.empty((n, self.hidden_size), dtype=np.float32) for a in wanted}
        token_chunks = []
        num_tokens = np.zeros(n, dtype=np.int64)
        finished = np.zeros(n, dtype=bool)
        generated: list[list[int]] = [[] for _ in range(n)]
        with torch.inference_mode():
            for start in range(0, n, self.batch_size):
                idx = order[start : start + self.batch_size]
                chunk = [rows[i] for i in idx]
                if uniforms is None:
                    h, t, counts = self._pooled_prefill(chunk, ranges[idx], wanted, want_tokens)
                else:
                    u = torch.as_tensor(uniforms[idx], dtype=torch.float32, device=self.device)
                    h, t, ids, valid = self._decoding_loop(chunk, u, wanted)
                    counts = valid.sum(dim=1).cpu().numpy()
                    ids = ids.cpu().numpy()
                    for k, i in enumerate(idx):
                        generated[i] = ids[k, : counts[k]].tolist()
                        finished[i] = generated[i][-1] in self._eos_ids
                num_tokens[idx] = counts
                for a in wanted:
                    values = h[a].cpu().numpy()
                    bad = ~np.isfinite(values).all(axis=1)
                    if bad.any():
                        raise RuntimeError(f"non-finite hidden states for samples {idx[bad].tolist()} at layer {a}")
                    hidden[a][idx] = values
                if want_tokens:
                    token_chunks.append((idx, {a: t[a].to(torch.float16).cpu().numpy() for a in wanted}))
        token_states = None
        if want_tokens:
            # rows are padded past num_tokens[b] (documented in ExtractionResult); pooled states never are
            padded_shape = (n, int(num_tokens.max()), self.hidden_size)
            token_states = {a: np.zeros(padded_shape, dtype=np.float16) for a in wanted}
            for idx, chunk_states in token_chunks:
                for a, values in chunk_states.items():
                    for k, i in enumerate(idx):
                        token_states[a][i, : num_tokens[i]] = values[k, : num_tokens[i]]
        return ExtractionResult(
            hidden={layer: hidden[absolute[layer]] for layer in asked},
            generated_text=[self._decode(g) if g else "" for g in generated],
            generated_ids=generated,
            num_tokens=num_tokens,
            prompt_tokens=np.asarray(prompt_lengths, dtype=np.int64),
            finished=finished,
            token_states=None if token_states is None else {layer: token_states[absolute[layer]] for layer in asked},
        )
