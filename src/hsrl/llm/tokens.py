"""Prompt token ids, shared by the text backends (transformers and vLLM), so both feed a model the same ids.

Causal models: a sample's ids are `prefix ids + ids of (observation + tail)` (see `hsrl.llm.prompt`); the observation's
token range (for 'mean' pooling) is the tokens whose character offsets overlap the observation. Encoder models
tokenize the whole prompt at once. Also here: the template resolution, the end-of-sequence ids, the length checks,
the decoding of generated ids and the per-sample sampling key, each defined once.
"""

import hashlib
from typing import Sequence

import numpy as np

from hsrl.llm.prompt import TEMPLATE_VERSIONS, PromptTemplate


def leading_special_ids(tokenizer) -> list[int]:
    """Ids the tokenizer puts before a text (e.g. BOS) when adding special tokens; [] if none."""
    plain = tokenizer("x", add_special_tokens=False).input_ids
    full = tokenizer("x", add_special_tokens=True).input_ids
    for k in range(len(full) - len(plain) + 1):
        if full[k : k + len(plain)] == plain:
            return list(full[:k])
    return []


def resolve_template_name(spec, default: str) -> tuple[str, int | None]:
    """(template, version) of a spec, 'auto' resolved to `default`; raises if a built-in template's version is not the
    one built here (a placeholder template is built from the text in the spec, whatever its version)."""
    template = spec.template if spec.template != "auto" else default
    if getattr(spec, "template_text", None) is not None:  # a placeholder template: its text travels in the spec
        return template, spec.template_version
    version = spec.template_version if spec.template != "auto" else TEMPLATE_VERSIONS[template]
    if version != TEMPLATE_VERSIONS[template]:
        raise ValueError(
            f"prompt template {template!r} version {version} is not available: this hsrl builds version "
            f"{TEMPLATE_VERSIONS[template]}"
        )
    return template, version


def prefix_ids(tokenizer, template: PromptTemplate, causal: bool) -> list[int]:
    """The shared prefix's ids (causal models; [] for encoders, which tokenize whole prompts)."""
    if not causal:
        return []
    leading = [] if template.chat else leading_special_ids(tokenizer)
    return leading + tokenizer(template.prefix, add_special_tokens=False).input_ids


def encode_prompts(tokenizer, template: PromptTemplate, prefix: Sequence[int], causal: bool,
                   observations: Sequence[str]) -> tuple[list[list[int]], np.ndarray]:
    """Prompt token ids per sample and the (B, 2) [start, end) token range of each observation in them."""
    if causal:
        texts = [template.suffix(o) for o in observations]
        spans = [(0, len(o)) for o in observations]
        enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        head = list(prefix)
    else:
        texts = [template.render(o) for o in observations]
        spans = [template.observation_span(o) for o in observations]
        enc = tokenizer(texts, add_special_tokens=True, return_offsets_mapping=True, truncation=False)
        head = []
    rows, ranges = [], np.zeros((len(texts), 2), dtype=np.int64)
    for b, (ids, offsets, (lo, hi)) in enumerate(zip(enc.input_ids, enc.offset_mapping, spans)):
        inside = [k for k, (s, e) in enumerate(offsets) if e > s and s < hi and e > lo]
        if inside:
            ranges[b] = (len(head) + inside[0], len(head) + inside[-1] + 1)
        rows.append(head + list(ids))
    return rows, ranges


def eos_ids(generation_config, tokenizer) -> list[int]:
    """End-of-sequence ids: the generation config's plus the tokenizer's."""
    ids = set()
    for source in (getattr(generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if source is None:
            continue
        ids.update([source] if isinstance(source, int) else source)
    return sorted(ids)


def check_lengths(rows: Sequence[Sequence[int]], prompt_lengths: Sequence[int], extra: int,
                  max_prompt_length: int | None, context: int, model: str) -> None:
    """Raise if a prompt is longer than max_prompt_length, or prompt + `extra` tokens exceed the context."""
    lengths = np.asarray(prompt_lengths)
    if max_prompt_length is not None and lengths.max() > max_prompt_length:
        b = int(lengths.argmax())
        raise ValueError(
            f"prompt of sample {b} is {lengths[b]} tokens, {lengths[b] - max_prompt_length} more than "
            f"max_prompt_length={max_prompt_length}"
        )
    total = np.array([len(r) for r in rows]) + extra
    if total.max() > context:
        b = int(total.argmax())
        more = f" + {total[b] - lengths[b]} generated" if total[b] > lengths[b] else ""
        raise ValueError(
            f"sample {b}: prompt of {lengths[b]} tokens{more} = {total[b]} tokens, {total[b] - context} more "
            f"than the context of {model} ({context} tokens)"
        )


def decode_generated(tokenizer, ids: Sequence[int]) -> str:
    """Generated ids -> text that tokenizes back to them: special tokens kept, spaces not cleaned up."""
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def sample_keys(observations: Sequence[str | bytes], seeds: Sequence[int] | None = None) -> list[int]:
    """Each sample's sampling key: its seed when given, else a hash of what identifies its input (its text; for
    vision-language models its image's bytes plus text), so the same input draws the same whatever its batch."""
    if seeds is not None and len(seeds) != len(observations):
        raise ValueError(f"{len(seeds)} seeds for {len(observations)} observations")
    if seeds is not None:
        return [int(s) % 2**64 for s in seeds]
    raw = [o.encode() if isinstance(o, str) else bytes(o) for o in observations]
    return [int.from_bytes(hashlib.sha256(r).digest()[:8], "little") for r in raw]


def sample_uniforms(seed: int, tokens: int, keys: Sequence[int]) -> np.ndarray:
    """(B, tokens) uniforms in [0, 1): sample b's own stream, seeded by `seed` mixed with its key (`sample_keys`)."""
    out = np.empty((len(keys), tokens), dtype=np.float64)
    for b, key in enumerate(keys):
        out[b] = np.random.default_rng([seed % 2**64, key]).random(tokens)
    return out


def prompt_only_ranges(pooling: str, lengths: Sequence[int], observation_ranges: np.ndarray) -> np.ndarray:
    """(B, 2) [start, end) of the tokens prompt-only mode pools: the last prompt token ('last') or the observation's
    tokens ('mean'); raises where an observation has no tokens."""
    if pooling == "last":
        return np.stack([np.asarray(lengths) - 1, np.asarray(lengths)], axis=1)
    empty = np.nonzero(observation_ranges[:, 1] <= observation_ranges[:, 0])[0]
    if len(empty):
        raise ValueError(f"observations {empty.tolist()} have no tokens to pool (empty text?)")
    return observation_ranges


def generated_ids_to_reextract(tokenizer, generated_texts, generated_ids, count: int,
                               what: str = "observations") -> list[list[int]]:
    """The generated ids `reextract` pools, from exactly one of generated_texts (tokenized without special tokens)
    and generated_ids; raises unless there is one non-empty generation for each of the `count` inputs."""
    if (generated_texts is None) == (generated_ids is None):
        raise ValueError("give exactly one of generated_texts and generated_ids")
    if generated_ids is None:
        generated_ids = tokenizer(list(generated_texts), add_special_tokens=False).input_ids
    if len(generated_ids) != count:
        raise ValueError(f"{len(generated_ids)} generations for {count} {what}")
    empty = [b for b, g in enumerate(generated_ids) if len(g) == 0]
    if empty:
        raise ValueError(f"samples {empty} have no generated tokens to pool")
    return [list(g) for g in generated_ids]


def pad_generated(generated_ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample generated ids -> ((B, G) int32 ids padded with -1, (B,) int32 counts): the stored form."""
    lengths = np.array([len(g) for g in generated_ids], dtype=np.int32)
    ids = np.full((len(generated_ids), int(lengths.max(initial=0))), -1, dtype=np.int32)
    for b, g in enumerate(generated_ids):
        ids[b, : len(g)] = g
    return ids, lengths


def unpad_generated(ids: np.ndarray, lengths: np.ndarray) -> list[list[int]]:
    """The stored (B, G) ids and (B,) counts -> per-sample id lists; raises where a count or an id is impossible."""
    ids, lengths = np.asarray(ids), np.asarray(lengths)
    bad = np.nonzero((lengths < 0) | (lengths > ids.shape[1]))[0]
    if len(bad):
        raise ValueError(f"rows {bad.tolist()[:20]}: generated_len outside 0..{ids.shape[1]}")
    rows = [ids[b, : lengths[b]].tolist() for b in range(len(ids))]
    negative = [b for b, r in enumerate(rows) if r and min(r) < 0]
    if negative:
        raise ValueError(f"rows {negative[:20]}: negative token ids before generated_len")
    return rows


def retokenize_checked(tokenizer, texts: Sequence[str], eos: Sequence[int], max_tokens: int,
                       counts: Sequence[int] | None = None) -> tuple[list[list[int]], list[int]]:
    """Re-tokenise generated texts (data labelled without generated_ids) and check each against what generation can
    have produced: `counts[b]` tokens when the counts are known, else exactly `max_tokens` unless the ids end with an
    end-of-sequence token (then at most `max_tokens`); a text holding U+FFFD (bytes that decode to no character, e.g.
    a budget that ended inside a multi-byte character) fails too, as it re-tokenises to other ids, often as many.
    Returns (ids, rows that fail the check)."""
    texts = list(texts)
    ids = tokenizer(texts, add_special_tokens=False).input_ids
    eos = set(eos)
    bad = []
    for b, g in enumerate(ids):
        if "\ufffd" in texts[b]:
            ok = False
        elif counts is not None:
            ok = len(g) == int(counts[b])
        else:
            ok = 0 < len(g) <= max_tokens and (len(g) == max_tokens or g[-1] in eos)
        if not ok:
            bad.append(b)
    return [list(g) for g in ids], bad
