"""Tiny randomly initialised Qwen3 checkpoints for tests: no download, loads like a real one.

`build_tiny_qwen(folder)` trains a byte-level BPE tokenizer on game-style text with the `tokenizers` library,
builds a `Qwen3ForCausalLM` whose vocabulary is that tokenizer's, and saves both (plus a generation config) with
`save_pretrained`, so `AutoTokenizer` / `AutoModelForCausalLM.from_pretrained(folder)` load it through the same path
as a real checkpoint. Labelling, serving and online-RL tests reuse it.

    from tiny_qwen import build_tiny_qwen
    path = build_tiny_qwen(tmp_path / "qwen")               # chat template with a <think> generation prompt
    path = build_tiny_qwen(tmp_path / "plain", chat_template=None)

With `char_level=True` the tokenizer has one token per character (printable ASCII, newline, tab) and no merges, so
decoding and re-encoding any token sequence gives the same ids back (byte-level tokens can decode to invalid UTF-8,
which does not survive the round trip): tests that go through text (re-extraction) use it.
"""

from pathlib import Path

# A ChatML template like Qwen3-Thinking-2507's: the generation prompt opens the assistant's thinking block.
THINKING_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n<think>\n' }}{% endif %}"
)

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")

_CORPUS = """\
Map (interesting tiles as row, col offset from you; negative row is up, negative col is left):
-1, 0: tree
0, 2: cow on grass
2, -3: water
1, 1: stone
-3, 4: zombie on grass
0, -1: crafting table
2, 2: iron
-2, -2: coal
4, 0: diamond
Inventory: wood 3, sapling 1, stone 2, coal 1
Health: 9, Food: 7, Drink: 6, Energy: 8
Mana: 5, XP: 0, Dexterity: 1, Strength: 1, Intelligence: 1
Facing: up
Time: day, light level 0.85
Sleeping: no
I see a tree just above me and a cow to the right. I should collect wood first.
Action: do
The player faces the tree, so the next action is do. Then place a table and make a wood pickaxe.
Food is low, so walk right to the cow and eat it. Drink water when thirsty. Sleep at night.
noop left right up down do sleep place_stone place_table place_furnace place_plant
make_wood_pickaxe make_stone_pickaxe make_iron_pickaxe make_wood_sword make_stone_sword make_iron_sword
"""


def train_tokenizer(
    vocab_size: int = 512, char_level: bool = False, chat_template: str | None = THINKING_CHAT_TEMPLATE
):
    """A byte-level BPE (or character-level) `PreTrainedTokenizerFast` trained on game text, with Qwen's specials."""
    import string

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if char_level:
        chars = sorted(set(string.printable) - set("\r\x0b\x0c"))
        vocab = {t: i for i, t in enumerate([*SPECIAL_TOKENS, "<unk>", *chars])}
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
        tok.add_special_tokens(list(SPECIAL_TOKENS) + ["<unk>"])
        tok.decoder = decoders.Fuse()
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast


def build_tiny_qwen(
    folder: str | Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    num_kv_heads: int = 1,
    head_dim: int = 32,
    vocab_size: int = 512,
    char_level: bool = False,
    chat_template: str | None = THINKING_CHAT_TEMPLATE,
    max_position_embeddings: int = 4096,
    seed: int = 0,
) -> Path:
    """Save a tiny random Qwen3 causal LM and its tokenizer under `folder`; returns the folder."""
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    folder = Path(folder)
    tokenizer = train_tokenizer(vocab_size, char_level, chat_template)
    tokenizer.model_max_length = max_position_embeddings
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=head_dim,  # Qwen3's default is 128 whatever the hidden size; vLLM's CPU attention needs >= 32
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=False,  # a tied head would mostly repeat the input token
        eos_token_id=eos,
        pad_token_id=pad,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config)
    # Random init at std 0.02 makes every layer's output almost the same; larger weights give distinct tokens.
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0.0, 1.0)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
