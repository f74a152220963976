"""`hsrl label` stores the generated token ids (generated_ids, generated_len) and `hsrl extract` pools them, never a
re-tokenisation of text_generated; data labelled without them is re-tokenised only where the counts check out."""

import sys
from pathlib import Path

import numpy as np
import pytest

from hsrl.data import list_chunks, read_chunk, write_chunk
from hsrl.data.chunks import DataFileError, validate_fields
from hsrl.data.label import ExtractConfig, LabelConfig, extract_dataset, label_dataset
from hsrl.llm.tokens import pad_generated, unpad_generated

sys.path.insert(0, str(Path(__file__).parent))

from data_helpers import make_dataset, make_meta  # noqa: E402
from tiny_qwen import build_tiny_qwen  # noqa: E402

TOKENS = 16


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """Two Classic chunks of 8 rows with text observations (no Craftax needed)."""
    out = tmp_path_factory.mktemp("raw")
    make_dataset(out, np.random.default_rng(0), files=2, steps=4, num_envs=2)
    return out


def _label(raw, model, out, **kw):
    summary = label_dataset(LabelConfig(str(raw), str(out), model=str(model), tokens=TOKENS, temperature=1.0,
                                        batch_size=5, progress=False, **kw))
    assert not summary.failed and summary.samples == 16
    return out


def _drop_ids(src, dst):
    """The same chunks as data labelled before generated_ids existed."""
    dst.mkdir()
    for f in list_chunks(src):
        c = read_chunk(f)
        write_chunk(dst / f.name, {k: v for k, v in c.arrays.items() if not k.startswith("generated_")}, c.meta)
    return dst


def test_byte_level_generations_are_reextracted_from_their_ids(raw, tmp_path):
    """With a byte-level BPE, generated text mostly re-tokenises to other ids; `hsrl extract` still recomputes the
    labelled states, because it pools the stored ids. The same data without ids is refused, naming the rows."""
    model = build_tiny_qwen(tmp_path / "qwen", max_position_embeddings=16384)
    gen = _label(raw, model, tmp_path / "gen")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    differ = 0
    for f in list_chunks(gen):
        c = read_chunk(f)
        ids = unpad_generated(c["generated_ids"], c["generated_len"])
        assert c["generated_ids"].dtype == np.int32 and (c["generated_len"] > 0).all()
        assert all((c["generated_ids"][b, n:] == -1).all() for b, n in enumerate(c["generated_len"]))
        for text, g in zip(c["text_generated"], ids):
            assert text == tok.decode(g, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            differ += tok(str(text), add_special_tokens=False).input_ids != g
    assert differ > 0  # what re-tokenising would have pooled instead

    again = tmp_path / "again"
    assert not extract_dataset(ExtractConfig(str(gen), str(again), progress=False)).failed
    for a, b in zip(list_chunks(gen), list_chunks(again)):
        a, b = read_chunk(a), read_chunk(b)
        np.testing.assert_allclose(b["hidden_state"], a["hidden_state"], rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(b["generated_ids"], a["generated_ids"])
        np.testing.assert_array_equal(b["text_generated"], a["text_generated"])

    legacy = _drop_ids(gen, tmp_path / "legacy")
    summary = extract_dataset(ExtractConfig(str(legacy), str(tmp_path / "refused"), progress=False))
    assert len(summary.failed) == 2
    why = next(iter(summary.failed.values()))
    assert "generated_ids" in why and "rows" in why and "relabel" in why


def test_data_without_ids_is_reextracted_where_the_counts_check_out(raw, tmp_path):
    """One token per character: re-tokenising gives the generated ids back, the count check passes, and the states
    equal the labelled ones."""
    model = build_tiny_qwen(tmp_path / "chars", char_level=True, max_position_embeddings=16384)
    gen = _label(raw, model, tmp_path / "gen")
    legacy = _drop_ids(gen, tmp_path / "legacy")
    again = tmp_path / "again"
    assert not extract_dataset(ExtractConfig(str(legacy), str(again), progress=False)).failed
    for a, b in zip(list_chunks(gen), list_chunks(again)):
        a, b = read_chunk(a), read_chunk(b)
        np.testing.assert_allclose(b["hidden_state"], a["hidden_state"], rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(b["generated_len"], a["generated_len"])  # stored from now on


def test_prompt_only_labels_store_no_generated_ids(raw, tmp_path):
    model = build_tiny_qwen(tmp_path / "qwen")
    out = tmp_path / "p"
    assert not label_dataset(LabelConfig(str(raw), str(out), model=str(model), pooling="last", progress=False)).failed
    c = read_chunk(list_chunks(out)[0])
    assert "generated_ids" not in c and "generated_len" not in c


def test_schema_of_generated_ids():
    ids, lengths = pad_generated([[5, 6, 7], [8], [9, 10]])
    assert ids.tolist() == [[5, 6, 7], [8, -1, -1], [9, 10, -1]] and lengths.tolist() == [3, 1, 2]
    assert unpad_generated(ids, lengths) == [[5, 6, 7], [8], [9, 10]]
    with pytest.raises(ValueError, match="generated_len outside"):
        unpad_generated(ids, np.array([3, 4, 1]))
    with pytest.raises(ValueError, match="negative token ids"):
        unpad_generated(ids, np.array([3, 2, 2]))
    meta = make_meta(3)
    base = {k: (v.shape, v.dtype) for k, v in {
        "obs": np.zeros((3, 1345), np.float32), "next_obs": np.zeros((3, 1345), np.float32),
        "action": np.zeros(3, np.int32), "reward": np.zeros(3, np.float32), "done": np.zeros(3, bool)}.items()}
    ok = {**base, "generated_ids": (ids.shape, ids.dtype), "generated_len": (lengths.shape, lengths.dtype)}
    assert validate_fields(ok, meta) == 3
    with pytest.raises(DataFileError, match="generated_len.*stored together"):
        validate_fields({**base, "generated_ids": (ids.shape, ids.dtype)}, meta)
    with pytest.raises(DataFileError, match="generated_ids"):
        validate_fields({**ok, "generated_ids": ((3,), ids.dtype)}, meta)
