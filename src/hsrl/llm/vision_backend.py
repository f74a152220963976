"""Hidden-state extraction from vision-language models with transformers: the model reads the image observation.

Same spec, layers, modes and pooling as the text backend (`hsrl.llm.transformers_backend`, whose batching, decoding
loop, sampling and result assembly this class inherits); what differs is the prompt and how the model is called.
Tested with Qwen3-VL (reference: `Qwen/Qwen3-VL-4B-Instruct`, registry name `qwen3-vl-4b`); the Qwen-VL family
(3D rotary positions from the model's `get_rope_index`) is what it supports.

- Inputs: `images` (B, H, W, 3) float in [0, 1] or uint8, converted by `hsrl.pixels.pixels_to_uint8` (the one
  conversion), and for input 'image+text' the text observations too.
- Prompt: `hsrl.llm.prompt.build_vision_template` through the tokenizer's chat template (system message with the rules,
  then the user message: image, text observation for 'image+text', question). The model's image processor turns each
  image into patches; the image placeholder is expanded to one token per merged patch group
  (`grid_t * grid_h * grid_w / merge_size**2`, what Qwen-VL's processor does), and the whole prompt is tokenized once.
- Layers: the language model's HF `hidden_states` tuple (0 = the embeddings, image features already in place; i = the
  output of block i; -1 = after the final norm). Qwen3-VL's "deepstack" adds visual features to the output of its
  first blocks after the block; HF's tuple, and hsrl, record the block's own output.
- Prompt-only (tokens = 1): 'last' pools the last prompt token, 'mean' the observation's tokens: the image's tokens,
  plus the text observation's tokens for 'image+text'.
- Generation (tokens = N > 1): the text backend's decoding loop (each sampled token fed back so its own states are
  pooled, end-of-sequence included, batch stops when all rows stopped), with per-sample uniforms keyed by a hash of
  the image's bytes and the text observation, so a sample's draw does not depend on its batch. The image and video
  placeholder tokens are never sampled: the model reads any such id in a prompt as a slot for image features, so a
  generation holding one could not be re-extracted (a trained model does not write them; random ones do).
- Padding: the 3D positions come from `get_rope_index` with the attention mask, so every row's positions start at
  0 at its first real token whatever the padding; generated tokens continue from the largest prompt position (what
  HF's rope deltas give). Re-extraction is one prefill over prompt + generated ids.
- Shared-prefix cache (default): everything before the image (the system message: most of the prompt) is the same
  for every sample, so, as in the text backend, its keys/values are computed once and copied into each batch's
  cache, rows are right-padded and only the image and what follows run. `prefix_cache=False` runs whole prompts,
  left-padded (equal results, tested).
"""

import inspect
from typing import Sequence

import numpy as np
import torch

from hsrl.llm.models import LoadedModel, load_vision_model, model_for_spec
from hsrl.llm.pooling import pool
from hsrl.llm.prompt import build_vision_template
from hsrl.llm.spec import ExtractionSpec
from hsrl.llm.tokens import resolve_template_name, sample_keys
from hsrl.llm.transformers_backend import TransformersExtractor, _find_blocks
from hsrl.pixels import pixels_to_uint8


class _Row(list):
    """A prompt's token ids (a list, so the text backend sorts, batches and pads it) plus its image's patches."""

    pixel_values: torch.Tensor  # (patches, D) from the image processor
    grid: torch.Tensor  # (3,) image_grid_thw
    observation: np.ndarray  # row positions of the observation's tokens (image, then text)

    def extended(self, ids: Sequence[int]) -> "_Row":
        row = _Row(list(self) + list(ids))
        row.pixel_values, row.grid, row.observation = self.pixel_values, self.grid, self.observation
        return row


def _objects(items: list) -> np.ndarray:
    """A 1-D object array (indexable by the text backend's batch index arrays) of per-row arrays."""
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


class VisionExtractor(TransformersExtractor):
    """Extractor on a transformers vision-language model; see the module docstring.

    spec: input 'image' or 'image+text'; `self.spec` is it resolved ('auto' template and dtype filled in).
    device: None = CUDA when available, else CPU. batch_size: samples per forward pass.
    prefix_cache: reuse the keys/values of the prompt before the image (rows right-padded); False: whole prompts,
        left-padded.
    model: an already loaded model (`hsrl.llm.models.load_vision_model`) to share between extractors.
    """

    def __init__(
        self,
        spec: ExtractionSpec,
        *,
        device: str | None = None,
        batch_size: int = 16,
        prefix_cache: bool = True,
        model: LoadedModel | None = None,
    ):
        if not spec.reads_images or spec.backend != "transformers":
            raise ValueError(
                f"VisionExtractor reads images with transformers; spec.input={spec.input!r}, "
                f"spec.backend={spec.backend!r} needs another backend (use hsrl.llm.make_extractor)"
            )
        model = model_for_spec(spec, model, load_vision_model, device)
        if model.image_processor is None:
            raise ValueError(f"{model.path} was loaded without an image processor (load it with load_vision_model)")
        base = model.model.base_model
        if not hasattr(base, "get_rope_index") or not hasattr(base, "language_model"):
            raise ValueError(f"{spec.model}: {type(model.model).__name__} is not a Qwen-VL model (3D rotary positions "
                             f"from get_rope_index), the family VisionExtractor supports")
        template, version = resolve_template_name(spec, "chat")
        resolved = spec.replace(template=template, template_version=version, dtype=model.dtype)
        padding = "right" if prefix_cache else "left"
        self._bind(resolved, model, base, batch_size, padding, blocks=_find_blocks(base.language_model))
        self._image_token_id = int(model.model.config.image_token_id)
        image_token = model.tokenizer.convert_ids_to_tokens(self._image_token_id)
        self.template = build_vision_template(template, spec.variant, spec.input, model.tokenizer, image_token)
        self._merge = int(model.image_processor.merge_size)
        placeholders = {self._image_token_id, getattr(model.model.config, "video_token_id", None)} - {None}
        self._placeholder_ids = torch.tensor(sorted(placeholders), dtype=torch.long, device=self.device)
        self._rope_takes_types = "mm_token_type_ids" in inspect.signature(base.get_rope_index).parameters
        # the image placeholder is a special token, so the text before it tokenizes alike alone and in a prompt
        before_image = self.template.prefix.split(image_token)[0]
        self._prefix_ids = model.tokenizer(before_image, add_special_tokens=False).input_ids if prefix_cache else []
        self.prefix_cache = bool(self._prefix_ids)
        self._prefix_kv = None

    # ---- inputs -------------------------------------------------------------------------------------------------

    def _inputs(self, observations, images) -> tuple[list[str] | None, np.ndarray, int]:
        """The text observations (None for input 'image'), validated (B, H, W, 3) uint8 images, and B."""
        if images is None:
            raise ValueError(f"spec.input={self.spec.input!r} reads images: pass images=(batch, height, width, 3) "
                             f"pixel observations")
        u8 = pixels_to_uint8(images)
        if u8.ndim != 4 or u8.shape[-1] != 3 or min(u8.shape[1:3], default=0) < 1:
            raise ValueError(f"images: expected shape (batch, height, width, 3), got {tuple(u8.shape)}")
        if len(u8) == 0:
            raise ValueError("no observations to extract")
        if not self.spec.reads_text:
            if observations is not None:
                raise ValueError("spec.input='image' reads no text observation; pass observations=None")
            return None, u8, len(u8)
        if observations is None:
            raise ValueError("spec.input='image+text' reads the text observation too: pass observations")
        observations = list(observations)
        if len(observations) != len(u8):
            raise ValueError(f"{len(observations)} text observations for {len(u8)} images")
        return observations, u8, len(u8)

    def _sample_keys(self, texts, images, seeds) -> list[int]:
        """A sample's input (its sampling stream) is its image (shape and bytes) plus its text."""
        texts = texts if texts is not None else [""] * len(images)
        inputs = [np.asarray(img.shape).tobytes() + img.tobytes() + t.encode() for img, t in zip(images, texts)]
        return sample_keys(inputs, seeds)

    def _encode(self, texts, images):
        return self.encode(texts, images), None

    def _prompt_only_ranges(self, rows, lengths, observation_ranges):
        """Per row, the positions pooled: the last prompt token ('last'), or the observation's tokens ('mean')."""
        if self.spec.pooling == "last":
            return _objects([np.array([len(r) - 1]) for r in rows])
        return _objects([r.observation for r in rows])

    def _generated_ranges(self, prompts, rows):
        return _objects([np.arange(len(p), len(r)) for p, r in zip(prompts, rows)])

    def _extend(self, prompt: "_Row", generated):
        return prompt.extended(generated)

    def _check_generated(self, generated_ids) -> None:
        placeholders = set(self._placeholder_ids.tolist())
        held = [b for b, g in enumerate(generated_ids) if placeholders.intersection(g)]
        if held:
            raise ValueError(f"the generations of samples {held} hold image/video placeholder tokens, which the model "
                             f"would read as image slots")

    def encode(self, observations: Sequence[str] | None, images: np.ndarray) -> list[_Row]:
        """Prompt rows (token ids with their image's patches and the positions of the observation's tokens)."""
        tok = self.loaded.tokenizer
        processed = self.loaded.image_processor(images=list(images), return_tensors="pt")
        pixel_values, grid = processed["pixel_values"], processed["image_grid_thw"]
        patches = grid.prod(-1).tolist()
        counts = [p // self._merge**2 for p in patches]
        image_token = self.template.image_token
        texts, spans = [], []
        for obs, n in zip(observations if observations is not None else [""] * len(images), counts):
            prefix = self.template.prefix.replace(image_token, image_token * n)
            texts.append(prefix + obs + self.template.tail)
            spans.append((len(prefix), len(prefix) + len(obs)))
        enc = tok(texts, add_special_tokens=False, return_offsets_mapping=True)
        rows, start = [], 0
        for b, (ids, offsets, (lo, hi)) in enumerate(zip(enc.input_ids, enc.offset_mapping, spans)):
            row = _Row(ids)
            row.pixel_values, row.grid = pixel_values[start : start + patches[b]], grid[b]
            start += patches[b]
            image_positions = [k for k, t in enumerate(ids) if t == self._image_token_id]
            if len(image_positions) != counts[b]:
                raise ValueError(f"sample {b}: the prompt holds {len(image_positions)} image tokens, its image needs "
                                 f"{counts[b]} (does the text observation contain {image_token!r}?)")
            text_positions = [k for k, (s, e) in enumerate(offsets) if e > s and s < hi and e > lo]
            row.observation = np.asarray(image_positions + text_positions, dtype=np.int64)
            if self._prefix_ids and ids[: len(self._prefix_ids)] != self._prefix_ids:
                raise AssertionError("the prompt does not start with the cached prefix's tokens")
            rows.append(row)
        return rows

    # ---- model calls --------------------------------------------------------------------------------------------

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-token logits with the image/video placeholders ruled out (see the module docstring)."""
        logits = super()._logits(hidden)
        logits[..., self._placeholder_ids] = float("-inf")
        return logits

    def _new_cache(self, batch: int):
        """The text backend's cache (holding the shared prefix when on), made with the language model's config."""
        return super()._new_cache(batch, config=self.loaded.model.config.get_text_config())

    def _prefill(self, rows: list[_Row], layers: set[int], keep_cache: bool):
        """Forward over padded rows with their images; same return values as the text backend's `_prefill`,
        `pos` being each token's largest 3D position (a text token's position; the next token follows it)."""
        ids, mask, _, offsets = self._layout(rows)
        pixel_values = torch.cat([r.pixel_values for r in rows]).to(self.device)
        grid = torch.stack([r.grid for r in rows]).to(self.device)
        rope_kw = {"input_ids": ids, "image_grid_thw": grid, "attention_mask": mask.long()}
        if self._rope_takes_types:
            rope_kw["mm_token_type_ids"] = (ids == self._image_token_id).int()
        rope, _ = self._base.get_rope_index(**rope_kw)  # (3, B, T), each row from 0 at its first real token
        text_pos = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
        positions = torch.cat([text_pos[None], rope])
        cache = self._new_cache(len(rows)) if keep_cache or self.prefix_cache else None
        first = len(self._prefix_ids)  # columns held by the cache, not run here (0 without the prefix cache)
        states, out = self._base_forward(
            layers, input_ids=ids[:, first:], attention_mask=mask.long(), position_ids=positions[:, :, first:],
            pixel_values=pixel_values, image_grid_thw=grid, use_cache=cache is not None, **{self._cache_kw: cache},
        )
        cache = getattr(out, self._cache_kw, None) if keep_cache else None
        return states, out.last_hidden_state, cache, mask, rope.max(dim=0).values, offsets, first

    def _pooled_prefill(self, rows, targets, layers: set[int], want_tokens: bool):
        """Prefill and pool, per row, the states at its target positions (row coordinates)."""
        states, _, _, _, _, offsets, first = self._prefill(rows, layers, keep_cache=False)
        counts = np.array([len(t) for t in targets], dtype=np.int64)
        if (counts == 0).any():
            raise ValueError(f"samples {np.flatnonzero(counts == 0).tolist()} of the batch have no tokens to pool")
        cols = np.zeros((len(rows), int(counts.max())), dtype=np.int64)
        for b, t in enumerate(targets):
            cols[b] = offsets[b] + t[0] - first  # padding repeats the first target; masked out below
            cols[b, : counts[b]] = offsets[b] + t - first
        if (cols < 0).any():
            raise AssertionError("pooled tokens fall inside the cached prefix")
        cols = torch.as_tensor(cols, device=self.device)
        mask = torch.arange(cols.shape[1], device=self.device)[None] < torch.as_tensor(counts, device=self.device)[:, None]
        hidden, tokens = {}, {}
        for layer in layers:
            h = states[layer]
            picked = h.gather(1, cols[:, :, None].expand(-1, -1, h.shape[-1]))
            hidden[layer] = pool(picked, mask, self.spec.pooling)
            if want_tokens:
                tokens[layer] = picked
        return hidden, tokens, counts
