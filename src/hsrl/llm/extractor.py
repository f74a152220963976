"""The one backend interface: observations in, one hidden-state vector per sample (per layer) out.

Observations are text (rendered by `hsrl.text`) and, for vision-language models (`spec.input` 'image' or
'image+text'), images: `(B, H, W, 3)` float in [0, 1] or uint8, converted by `hsrl.pixels.pixels_to_uint8`.

Labelling, the hidden-state server, online RL and evaluation all call `Extractor.extract` (and `reextract` to recompute
states for text that was generated before). Backends differ only inside it. A failed extraction raises; it never
returns zeros.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from hsrl.llm.spec import ExtractionSpec


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
    """A loaded model plus a resolved `ExtractionSpec`."""

    spec: ExtractionSpec  # resolved: no 'auto' left
    hidden_size: int
    num_layers: int

    @abstractmethod
    def extract(
        self,
        observations: Sequence[str] | None,
        layers: Sequence[int] | int | None = None,
        seeds: Sequence[int] | None = None,
        return_token_states: bool = False,
        images=None,
    ) -> ExtractionResult:
        """Hidden states for observations (any number; batched inside), by the spec's mode and pooling.

        observations: the text observations (None when spec.input is 'image'); images: (B, H, W, 3) image
        observations, required when spec.input is 'image' or 'image+text'.
        layers overrides spec.layer for this call. seeds (one int per sample) are mixed with spec.seed to seed each
        sample's sampling; by default each sample's seed is derived from spec.seed and its prompt text, so the same
        observation gives the same generation whatever else is in the batch.
        """

    @abstractmethod
    def reextract(
        self,
        observations: Sequence[str] | None,
        generated_texts: Sequence[str] | None = None,
        layers: Sequence[int] | int | None = None,
        generated_ids: Sequence[Sequence[int]] | None = None,
        return_token_states: bool = False,
        images=None,
    ) -> ExtractionResult:
        """States of already generated text: one prefill over prompt + generated tokens, pooled over the latter."""


def make_extractor(spec: ExtractionSpec, **kwargs) -> Extractor:
    """The backend that `spec.backend` names, loaded and ready (kwargs go to the backend's constructor)."""
    if spec.backend == "transformers" and spec.reads_images:
        from hsrl.llm.vision_backend import VisionExtractor

        return VisionExtractor(spec, **kwargs)
    if spec.backend == "transformers":
        from hsrl.llm.transformers_backend import TransformersExtractor

        return TransformersExtractor(spec, **kwargs)
    if spec.backend == "vllm":
        from hsrl.llm.vllm_backend import VLLMExtractor

        return VLLMExtractor(spec, **kwargs)
    raise ValueError(f"unknown backend {spec.backend!r}")
