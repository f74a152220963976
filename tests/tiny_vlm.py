"""A tiny randomly initialised Qwen3-VL checkpoint for tests: no download, loads like a real one.

`build_tiny_vlm(folder)` builds a `Qwen3VLForConditionalGeneration` (2 text blocks, a 2-block vision tower with
8-pixel patches) and the processor parts hsrl loads (`hsrl.llm.models.load_vision_model`): the image processor (PIL
backend) and the byte-level BPE tokenizer of `tiny_qwen` plus Qwen-VL's vision tokens, with a ChatML template that
renders images as Qwen3-VL's does; all saved with `save_pretrained`, so `AutoModelForImageTextToText`,
`AutoTokenizer` and `AutoImageProcessor.from_pretrained(folder)` load them through the same path as
`Qwen/Qwen3-VL-4B-Instruct`. (No `Qwen3VLProcessor`: transformers 5 builds it only with torchvision installed.) A Craftax-Classic frame (63 x 63) is resized to 64 x 64: 8 x 8
patches, merged 2 x 2 into 16 image tokens.

Needs only torch, transformers and tokenizers (no Craftax), so the GPU tests can use it too.

    from tiny_vlm import build_tiny_vlm
    path = build_tiny_vlm(tmp_path / "vlm")
"""

from pathlib import Path

from tiny_qwen import train_tokenizer

from hsrl.llm.make_model import QWEN3_VL_CHAT_TEMPLATE

VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")

# Qwen3-VL-Instruct's template reduced to what hsrl sends (the one `hsrl make-model qwen3-vl-4b` writes)
VL_CHAT_TEMPLATE = QWEN3_VL_CHAT_TEMPLATE


def build_tiny_vlm(
    folder: str | Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    num_kv_heads: int = 1,
    head_dim: int = 32,
    vision_hidden_size: int = 32,
    vision_depth: int = 2,
    patch_size: int = 8,
    max_position_embeddings: int = 8192,
    char_level: bool = False,
    seed: int = 0,
) -> Path:
    """Save a tiny random Qwen3-VL model and its processor under `folder`; returns the folder.

    char_level: one token per character (see `tiny_qwen.train_tokenizer`), so generated text re-tokenizes to the
    same ids (re-extraction from text).
    """
    import torch
    from transformers import GenerationConfig, Qwen3VLConfig, Qwen3VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    folder = Path(folder)
    tokenizer = train_tokenizer(char_level=char_level, chat_template=VL_CHAT_TEMPLATE)
    tokenizer.add_tokens(list(VISION_TOKENS), special_tokens=True)
    tokenizer.model_max_length = max_position_embeddings
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS}
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    # 16 x 16 pixels per merged token; min 64 x 64 so a 63 x 63 frame becomes 64 x 64, max 128 x 128 for larger frames
    sizes = {"shortest_edge": 64 * 64, "longest_edge": 128 * 128}
    image_processor = Qwen2VLImageProcessorPil(size=sizes, patch_size=patch_size, temporal_patch_size=2, merge_size=2)
    text_config = dict(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        head_dim=head_dim, max_position_embeddings=max_position_embeddings,
        # mrope sections (temporal, height, width) cover head_dim / 2 rotary frequencies
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [6, 5, 5],
                         "mrope_interleaved": True},
        pad_token_id=pad, eos_token_id=eos, bos_token_id=None,
    )
    vision_config = dict(
        depth=vision_depth, hidden_size=vision_hidden_size, intermediate_size=2 * vision_hidden_size,
        num_heads=2, patch_size=patch_size, spatial_merge_size=2, temporal_patch_size=2,
        out_hidden_size=hidden_size, num_position_embeddings=64, deepstack_visual_indexes=[0],
    )
    config = Qwen3VLConfig(
        text_config=text_config, vision_config=vision_config, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config)
    # Random init at std 0.02 makes every layer's output almost the same; larger weights give distinct tokens.
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0.0, 1.0)
        model.model.visual.merger.linear_fc2.weight.normal_(0.0, 0.5)  # images that differ give states that differ
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)  # with the chat template
    image_processor.save_pretrained(folder)
    return folder
