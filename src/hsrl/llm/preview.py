"""What the model reads: one sample's exact prompt and its token count, from the tokenizer alone (no weights).

`preview_prompt(spec, observation, history)` builds the prompt the way every backend builds it (the spec's prompt
program, the tokenizer's chat template, the same token ids: `hsrl.llm.tokens.encode_prompts`), so `hsrl prompt`
shows exactly what labelling, the server, online RL and evaluation feed the model for that sample.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from hsrl.llm.prompt import prompt_program
from hsrl.llm.spec import ExtractionSpec


@dataclass(frozen=True)
class PromptPreview:
    text: str  # the prompt as text, chat template applied
    tokens: int  # its length in the model's tokens (special tokens the tokenizer adds included)
    prefix_tokens: int  # of which the shared prefix (causal models; the prefix cache holds it), 0 for encoders
    added: tuple[str, ...]  # special tokens the tokenizer adds around the text (e.g. [CLS] ... [SEP])
    context: int | None  # the model's context length
    template: str  # the template used ('auto' resolved by model kind, as the backends resolve it)


def _load_tokenizer(name: str):
    """(tokenizer, causal, context length) of a model, from its folder or the hub cache; no weights."""
    from transformers import AutoConfig, AutoTokenizer

    from hsrl.llm.models import _is_causal, is_vision_config, resolve_model

    path = resolve_model(name)
    local = Path(path).is_dir()
    config = AutoConfig.from_pretrained(path, local_files_only=local)
    if is_vision_config(config):
        raise ValueError(f"{name} is a vision-language model: its prompts hold images; `hsrl prompt` shows text prompts")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local)
    context = getattr(config.get_text_config(), "max_position_embeddings", None)
    limit = getattr(tokenizer, "model_max_length", None)
    if context is None or (limit is not None and limit < context):
        context = limit
    tokenizer.model_max_length = int(1e30)  # we report a prompt too long for the model ourselves, once
    return tokenizer, _is_causal(config), context


def preview_prompt(spec: ExtractionSpec, observation: str, history: Sequence[tuple[str, int]] = (),
                   future=None) -> PromptPreview:
    """The exact prompt of one sample (its text observation, previous (text, action) pairs, oldest first, and for
    hindsight specs its next steps, a `hsrl.llm.prompt.Future`)."""
    from hsrl.llm.tokens import encode_prompts, prefix_ids, resolve_template_name

    if spec.reads_images:
        raise ValueError(f"input={spec.input!r}: the prompt holds images; `hsrl prompt` shows text prompts")
    tokenizer, causal, context = _load_tokenizer(spec.model)
    default = "chat" if causal or spec.backend == "vllm" else "short"
    template, version = resolve_template_name(spec, default)
    program = prompt_program(spec.replace(template=template, template_version=version))
    built = program.template(tokenizer)
    prefix = prefix_ids(tokenizer, built, causal)
    sample = program.sample_text(observation, list(history), future)
    (ids,), _ = encode_prompts(tokenizer, built, prefix, causal, [sample])
    text = built.render(sample)
    plain = tokenizer(text, add_special_tokens=False).input_ids
    added: tuple[str, ...] = ()
    for k in range(len(ids) - len(plain) + 1):
        if ids[k : k + len(plain)] == plain:
            added = tuple(tokenizer.convert_ids_to_tokens(ids[:k] + ids[k + len(plain):]))
            break
    return PromptPreview(text, len(ids), len(prefix), added, context, template)
