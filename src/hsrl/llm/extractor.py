"""The backend interface and the extraction steps every backend shares: observations in, one hidden-state vector per
sample (per layer) out.

Observations are text (rendered by `hsrl.text`) and, for vision-language models (`spec.input` 'image' or
'image+text'), images: `(B, H, W, 3)` float in [0, 1] or uint8, converted by `hsrl.pixels.pixels_to_uint8`.

Labelling, the hidden-state server, online RL and evaluation all call `Extractor.extract` (and `reextract` to recompute
states for text that was generated before). `Extractor` runs the steps every backend shares (read the inputs,
encode, check lengths, choose the token ranges to pool, assemble the result of a re-extraction); a backend
(`hsrl.llm.transformers_backend`, `vision_backend`, `vllm_backend`) implements only its own encoding, forward pass and
generation. `hsrl.llm.backends.make_extractor` picks the backend a spec names. A failed extraction raises; it never
returns zeros.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from hsrl.llm.spec import ExtractionSpec
from hsrl.llm.tokens import (
    check_lengths, decode_generated, generated_ids_to_reextract, prompt_only_ranges, sample_keys,
)


@dataclass
class ExtractionResult:
    """What one `extract` / `reextract` call returns for a batch of B samples.

    hidden: requested layer (as asked, e.g. -1) -> (B, H) float32 pooled states.
    generated_text: per sample, the generated text ('' in prompt-only mode). It is decoded with special tokens kept,
        so a generation that ended with end-of-sequence ends with that token's text (e.g. '<|im_end|>'); tokenizing it
        again (re-extraction) gives the same tokens back.
    generated_ids: per sample, the generated token ids (end-of-sequence included when generated).
    num_tokens: (B,) number of tokens pooled per sample.
    prompt_tokens: (B,) prompt length in tokens.
    finished: (B,) True where generation stopped at end-of-sequence (False in prompt-only mode).
    token_states: on request, layer -> (B, T, H) float16 states of the pooled tokens (the observation's tokens or the
        last prompt token in prompt-only mode, the generated tokens in generation mode); positions
        t >= num_tokens[b] are padding (zeros).
    """

    hidden: dict[int, np.ndarray]
    generated_text: list[str]
    generated_ids: list[list[int]]
    num_tokens: np.ndarray
    prompt_tokens: np.ndarray
    finished: np.ndarray
    token_states: dict[int, np.ndarray] | None = None

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(self.hidden)

    @property
    def hidden_state(self) -> np.ndarray:
        """The (B, H) states when exactly one layer was extracted."""
        if len(self.hidden) != 1:
            raise ValueError(f"{len(self.hidden)} layers were extracted ({self.layers}); pick one from .hidden")
        return next(iter(self.hidden.values()))

    def stacked(self) -> np.ndarray:
        """(L, B, H) float32, layers in the order asked."""
        return np.stack([self.hidden[layer] for layer in self.hidden])


class Extractor(ABC):
    """A loaded model plus a resolved `ExtractionSpec`.

    `extract` and `reextract` are the same for every backend: they call the backend's hooks, below. A backend sets
    `spec`, `hidden_size`, `num_layers`, `tokenizer`, `context_length` and `_eos_ids`, and implements `_encode`,
    `_run_prefill` (one prefill, pooled over given token ranges) and `_run_generation` (sample, then pool the
    generated tokens' states); it may override the other hooks (inputs that are images, ranges that are not contiguous, ...).
    """

    spec: ExtractionSpec  # resolved: no 'auto' left
    hidden_size: int
    num_layers: int
    tokenizer: object  # the model's tokenizer (decodes generated ids, tokenizes generated text to re-extract)
    context_length: int  # most tokens a prompt plus its generation may hold
    _eos_ids: list[int]
    cache = None  # a `hsrl.llm.cache.StateCache`, or None: every state computed (`make_extractor(..., cache=)`)

    # ---- the shared steps -------------------------------------------------------------------------------------

    def extract(
        self,
        observations: Sequence[str] | None,
        layers: Sequence[int] | int | None = None,
        seeds: Sequence[int] | None = None,
        return_token_states: bool = False,
        images=None,
        history: Sequence[Sequence[tuple[str, int]]] | None = None,
        future=None,
    ) -> ExtractionResult:
        """Hidden states for observations (any number; batched inside), by the spec's mode and pooling.

        observations: the text observations (None when spec.input is 'image'); images: (B, H, W, 3) image
        observations, required when spec.input is 'image' or 'image+text'.
        history: per sample, its previous observations in the episode as (text, action id) pairs, oldest first, at
        most spec.history (None: none, as at an episode's first step); the prompt program (`self.program`) puts
        them in the prompt. future: per sample, its next steps in the recorded data (`hsrl.llm.prompt.Future`, at most
        spec.future; hindsight labels, `hsrl.data.label.row_future`; None: none known).
        layers overrides spec.layer for this call. seeds (one int per sample) are mixed with spec.seed to seed each
        sample's sampling; by default each sample's seed is derived from spec.seed and its prompt text, so the same
        observation gives the same generation whatever else is in the batch.
        """
        texts, images, _ = self._inputs(observations, images)
        texts = self._compose(texts, history, future)
        asked, _ = self._layers(layers)  # refuse layers this extractor cannot give before any work
        rows, observation_ranges = self._encode(texts, images)
        lengths = [len(r) for r in rows]
        keys = None
        if self.spec.generates:
            self._check_lengths(rows, lengths, self.spec.tokens)
            keys = self._sample_keys(texts, images, seeds)
            ranges = None
        else:
            self._check_lengths(rows, lengths, 0)
            ranges = self._prompt_only_ranges(rows, lengths, observation_ranges)
        if self.cache is None or return_token_states:
            return self._compute(rows, lengths, ranges, keys, layers, return_token_states)
        return self._cached(rows, lengths, ranges, keys, layers, tuple(dict.fromkeys(asked)), images)

    def _compute(self, rows, lengths, ranges, keys, layers, want_tokens: bool) -> ExtractionResult:
        """Run the backend: generation when `keys` are given, else one prefill pooled over `ranges`."""
        if keys is not None:
            return self._run_generation(rows, lengths, layers, want_tokens, keys)
        return self._run_prefill(rows, ranges, lengths, layers, want_tokens)

    def _cached(self, rows, lengths, ranges, keys, layers, asked: tuple[int, ...], images) -> ExtractionResult:
        """`_compute` through `self.cache` (`hsrl.llm.cache`): each distinct model input not already cached is
        computed once (duplicates in the batch included) and stored; the result is assembled in the input order."""
        from hsrl.llm.cache import CachedState, entry_key, input_hash

        spec_hash = self.spec.hash
        digests = [entry_key(spec_hash, asked, input_hash(row, None if images is None else images[i],
                                                          None if keys is None else keys[i]))
                   for i, row in enumerate(rows)]
        found = self.cache.get_many(digests, (len(asked), self.hidden_size))
        first: dict[bytes, int] = {}
        for i, (digest, state) in enumerate(zip(digests, found)):
            if state is None and digest not in first:
                first[digest] = i
        if first:
            todo = np.fromiter(first.values(), dtype=np.int64, count=len(first))
            result = self._compute([rows[i] for i in todo], [lengths[i] for i in todo],
                                   None if ranges is None else ranges[todo], None if keys is None else [keys[i] for i in todo],
                                   asked, False)
            hidden = result.stacked()
            new = [(digests[i], CachedState(hidden[:, j].copy(), list(result.generated_ids[j]), result.generated_text[j],
                                            int(result.num_tokens[j]), int(result.prompt_tokens[j]),
                                            bool(result.finished[j])))
                   for j, i in enumerate(todo)]
            self.cache.put_many(new)
            self.cache.count_duplicates(sum(state is None for state in found) - len(todo))
            computed = dict(new)
            found = [state if state is not None else computed[d] for d, state in zip(digests, found)]
        stacked = np.stack([s.hidden for s in found], axis=1)  # (L, B, H)
        return ExtractionResult(
            hidden={layer: stacked[k] for k, layer in enumerate(asked)},
            generated_text=[s.generated_text for s in found],
            generated_ids=[list(s.generated_ids) for s in found],
            num_tokens=np.array([s.num_tokens for s in found], dtype=np.int64),
            prompt_tokens=np.array([s.prompt_tokens for s in found], dtype=np.int64),
            finished=np.array([s.finished for s in found], dtype=bool),
        )

    def reextract(
        self,
        observations: Sequence[str] | None,
        generated_texts: Sequence[str] | None = None,
        layers: Sequence[int] | int | None = None,
        generated_ids: Sequence[Sequence[int]] | None = None,
        return_token_states: bool = False,
        images=None,
        history: Sequence[Sequence[tuple[str, int]]] | None = None,
        future=None,
    ) -> ExtractionResult:
        """States of already generated text: one prefill over prompt + generated tokens, pooled over the latter
        (`history` and `future` as in `extract`: the prompt the generation was made from)."""
        texts, images, count = self._inputs(observations, images)
        texts = self._compose(texts, history, future)
        self._check_reextract()
        generated_ids = generated_ids_to_reextract(self.tokenizer, generated_texts, generated_ids, count,
                                                   "images" if texts is None else "observations")
        self._check_generated(generated_ids)
        self._layers(layers)
        prompts, _ = self._encode(texts, images)
        rows = [self._extend(p, g) for p, g in zip(prompts, generated_ids)]
        lengths = [len(p) for p in prompts]
        self._check_lengths(rows, lengths, 0)
        result = self._run_prefill(rows, self._generated_ranges(prompts, rows), lengths, layers, return_token_states)
        result.generated_ids = generated_ids
        result.generated_text = [self._decode(g) for g in generated_ids]
        result.finished = np.array([g[-1] in self._eos_ids for g in generated_ids], dtype=bool)
        return result

    def check_prompt_lengths(self, observations: Sequence[str], history=None) -> None:
        """Raise ValueError, as `extract` would, if a text observation's prompt does not fit the model; runs the
        tokenizer only, so a server can refuse an oversized request before it reaches the model thread."""
        texts, images, _ = self._inputs(observations, None)
        texts = self._compose(texts, history)
        rows, _ = self._encode(texts, images)
        self._check_lengths(rows, [len(r) for r in rows], self.spec.tokens if self.spec.generates else 0)

    @property
    def program(self):
        """The prompt program of the (resolved) spec (`hsrl.llm.prompt.prompt_program`): what each prompt holds."""
        from hsrl.llm.prompt import prompt_program

        cached = self.__dict__.get("_program")
        if cached is None or cached[0] is not self.spec:
            cached = self.__dict__["_program"] = (self.spec, prompt_program(self.spec))
        return cached[1]

    def _compose(self, texts, history, future=None):
        """Each sample's slot in the prompt (`PromptProgram.sample_texts`): its history, observation and future."""
        if texts is None:
            if (history is not None and any(len(h) for h in history)) or (
                    future is not None and any(f is not None and len(f[0]) for f in future)):
                raise ValueError("history or future holds text observations, but this spec reads no text")
            return None
        return self.program.sample_texts(texts, history, future)

    def _layers(self, layers) -> tuple[tuple[int, ...], dict[int, int]]:
        """The layers asked (`layers`, default spec.layer) and each one's absolute index (0..num_layers)."""
        from hsrl.llm.pooling import resolve_layer  # imports torch: not at package import

        asked = self.spec.layers if layers is None else ((layers,) if isinstance(layers, int) else tuple(layers))
        return asked, {layer: resolve_layer(int(layer), self.num_layers) for layer in asked}

    def _check_lengths(self, rows, prompt_lengths: Sequence[int], extra: int) -> None:
        """Raise if a prompt is longer than max_prompt_length, or prompt + `extra` tokens exceed the context."""
        check_lengths(rows, prompt_lengths, extra, self.spec.max_prompt_length, self.context_length, self.spec.model)

    def _decode(self, ids: Sequence[int]) -> str:
        """Generated ids -> text that tokenizes back to them: special tokens kept, spaces not cleaned up."""
        return decode_generated(self.tokenizer, ids)

    # ---- hooks with a text default ------------------------------------------------------------------------------

    def _inputs(self, observations, images) -> tuple[list[str] | None, object, int]:
        """Validated inputs: (text observations or None, images or None, number of samples). Text backends refuse
        images."""
        if images is not None:
            raise ValueError(f"this extractor ({self.spec.backend} backend, spec.input={self.spec.input!r}) reads "
                             f"text only: it reads no images (use input='image' with a VLM on the transformers backend)")
        observations = list(observations)
        if not observations:
            raise ValueError("no observations to extract")
        return observations, None, len(observations)

    def _sample_keys(self, texts, images, seeds) -> list[int]:
        """Each sample's sampling key (`hsrl.llm.tokens.sample_keys`): its seed, or a hash of its input."""
        return sample_keys(texts, seeds)

    def _prompt_only_ranges(self, rows, lengths: Sequence[int], observation_ranges):
        """What prompt-only mode pools, per row: (B, 2) [start, end) token ranges by the spec's pooling."""
        return prompt_only_ranges(self.spec.pooling, lengths, observation_ranges)

    def _generated_ranges(self, prompts, rows):
        """What re-extraction pools, per row: the generated tokens, after the prompt."""
        return np.array([[len(p), len(r)] for p, r in zip(prompts, rows)], dtype=np.int64)

    def _extend(self, prompt, generated: Sequence[int]):
        """A prompt row followed by generated ids."""
        return list(prompt) + list(generated)

    def _check_reextract(self) -> None:
        """Raise if this extractor cannot re-extract (e.g. an encoder model)."""

    def _check_generated(self, generated_ids: list[list[int]]) -> None:
        """Raise if generated ids cannot be re-extracted by this model."""

    # ---- what each backend implements ---------------------------------------------------------------------------

    @abstractmethod
    def _encode(self, texts, images) -> tuple[list, np.ndarray | None]:
        """Prompt token rows per sample, and the (B, 2) token range of each observation in them (or None)."""

    @abstractmethod
    def _run_prefill(self, rows, ranges, prompt_lengths, layers, want_tokens: bool) -> ExtractionResult:
        """One prefill over `rows`, pooling each row's `ranges`; the result has no generation (re-extraction fills
        it in)."""

    @abstractmethod
    def _run_generation(self, rows, prompt_lengths, layers, want_tokens: bool, keys: list[int]) -> ExtractionResult:
        """Generate up to spec.tokens tokens per row (sampling seeded by spec.seed and `keys`) and pool the generated
        tokens' own states."""
