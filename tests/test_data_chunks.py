"""Chunk file format: round trips, pixel conversion, atomic writes, validation, corruption, dataset loading."""

import dataclasses
import json
import os
import zipfile

import numpy as np
import pytest
from data_helpers import SPEC, labelling_pool, make_arrays, make_dataset, make_meta, pooled_reference, token_states

from hsrl.data import (
    PIXEL_ROUNDTRIP_MAX_ERROR, ChunkMeta, DataFileError, HiddenLayout, chunk_path, hidden_layout, inspect_chunk,
    list_chunks, load_dataset, read_pooled_hidden,
    decode_text, encode_text, load_dataset as load, pixels_to_uint8, read_chunk, read_meta, uint8_to_pixels, update_chunk, write_chunk,
)
from hsrl.data import chunks as chunks_mod
from hsrl.data import dataset as dataset_mod


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# ------------------------------------------------------------------------------ round trips


def test_symbolic_round_trip(tmp_path, rng):
    arrays = make_arrays(rng, 5, 2, hidden=lambda n: rng.standard_normal((n, 6)).astype(np.float16))
    meta = make_meta(2, spec=SPEC, extra={"seed": 3, "policy": "random"})
    path = write_chunk(tmp_path / "c.npz", arrays, meta)
    chunk = read_chunk(path)
    assert chunk.meta == meta and chunk.meta.spec_hash and chunk.num_steps == 5
    for key, value in arrays.items():
        np.testing.assert_array_equal(chunk[key], value)
    assert chunk["action"].dtype == np.int32 and chunk["hidden_state"].dtype == np.float16
    assert chunk["text_obs"].dtype.kind == "U"
    np.testing.assert_array_equal(chunk.time_major("reward")[1], arrays["reward"][2:4])  # row = t * num_envs + env
    # Every member loads without pickles, and the file is compressed.
    with np.load(path, allow_pickle=False) as raw:
        assert set(raw.files) == set(arrays) | {"meta"}
        assert json.loads(str(raw["meta"]))["num_envs"] == 2
    with zipfile.ZipFile(path) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_DEFLATED}


def test_pixels_are_stored_as_rounded_uint8(tmp_path, rng):
    arrays = make_arrays(rng, 4, 2, pixels=True)
    path = write_chunk(tmp_path / "p.npz", arrays, make_meta(2, pixels=True))
    info = inspect_chunk(path)
    assert info.fields["obs"][1] == np.uint8 and info.fields["next_obs"][1] == np.uint8
    back = uint8_to_pixels(read_chunk(path)["obs"])
    assert back.dtype == np.float32
    assert np.abs(back - arrays["obs"]).max() <= PIXEL_ROUNDTRIP_MAX_ERROR + 1e-7


def test_pixel_conversion_error_bound():
    x = np.random.default_rng(1).random(1_000_000, dtype=np.float32)
    x[:4] = [0.0, 1.0, 0.999, 0.5 / 255]
    q = pixels_to_uint8(x)
    assert q[:3].tolist() == [0, 255, 255]  # rounded, not truncated (0.999 * 255 = 254.7)
    err = np.abs(uint8_to_pixels(q) - x).max()
    assert 0.00195 < err <= 0.5 / 255 + 1e-7  # the bound is tight and holds
    # Whole multiples of 1/255 (Craftax images before dimming, computed as render / 255.0) come back exactly.
    exact = np.arange(256, dtype=np.float32) / 255.0
    np.testing.assert_array_equal(uint8_to_pixels(pixels_to_uint8(exact)), exact)
    assert pixels_to_uint8(np.array([-1e-7, 1 + 1e-7], np.float32)).tolist() == [0, 255]  # float dust rounds
    for bad in ([-0.01], [1.01], [np.nan]):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            pixels_to_uint8(np.array(bad, np.float32))
    # one function for both kinds of input: uint8 passes through unchanged, other integers are refused
    np.testing.assert_array_equal(pixels_to_uint8(q), q)
    assert pixels_to_uint8(x.astype(np.float64))[:3].tolist() == [0, 255, 255]
    with pytest.raises(TypeError, match="int32"):
        pixels_to_uint8(np.zeros(3, np.int32))


def test_update_chunk_adds_and_replaces_keeping_others(tmp_path, rng):
    arrays = make_arrays(rng, 3, 2)
    path = write_chunk(tmp_path / "c.npz", arrays, make_meta(2))
    hidden = rng.standard_normal((6, 4)).astype(np.float32)
    new_meta = dataclasses.replace(read_meta(path), spec_json=SPEC)
    update_chunk(path, {"hidden_state": hidden, "text_generated": np.array(["a", "bb", "", "c", "d", "é"])},
                 meta=new_meta, drop=["log_prob"])
    chunk = read_chunk(path)
    assert chunk.meta.spec_json == SPEC and "log_prob" not in chunk
    np.testing.assert_array_equal(chunk["hidden_state"], hidden)
    np.testing.assert_array_equal(chunk["obs"], arrays["obs"])
    assert chunk["text_generated"][-1] == "é"
    assert set(read_chunk(path, ["reward"]).arrays) == {"reward"}


def test_generated_text_round_trips_exactly(tmp_path, rng):
    """numpy's unicode arrays drop trailing NULs ('a\\x00' -> 'a'); text_generated keeps them."""
    texts = ["ends in NUL\x00", "\x00", "", "é\x00\x00ü\x00", "plain", "\x00mid\x00dle"]
    assert np.array(texts)[0] != texts[0]  # what a fixed-width unicode array would store
    path = write_chunk(tmp_path / "c.npz", dict(make_arrays(rng, 3, 2), text_generated=texts), make_meta(2))
    assert inspect_chunk(path).fields["text_generated"][1] == np.int32
    chunk = read_chunk(path)
    assert chunk["text_generated"].dtype == object and chunk["text_generated"].tolist() == texts
    update_chunk(path, {"reward": np.zeros(6, np.float32)})  # read and written again: unchanged
    assert read_chunk(path)["text_generated"].tolist() == texts
    with np.load(path, allow_pickle=False) as z:  # plain arrays: no pickle needed
        assert z["text_generated"].shape == (6, max(map(len, texts)))
    assert load([path], ["text_generated"], show_progress=False)["text_generated"].tolist() == texts
    with pytest.raises(ValueError, match="cannot be cached"):
        load([path], ["text_generated"], cache_dir=tmp_path / "cache", show_progress=False)
    assert decode_text(encode_text(texts)).tolist() == texts
    with pytest.raises(ValueError, match="padded with -1"):
        decode_text(np.array([[97, -1, 98]], np.int32))


def test_generated_text_of_earlier_files_is_read(tmp_path, rng):
    """Files written before code points held text_generated as (N,) fixed-width unicode: still readable."""
    arrays = make_arrays(rng, 3, 2)
    path = _raw_chunk(tmp_path / "old.npz", arrays, make_meta(2), text_generated=np.array(["a", "", "b", "c", "d", "e"]))
    assert read_chunk(path)["text_generated"].tolist() == ["a", "", "b", "c", "d", "e"]


# ---------------------------------------------------------------------------- atomic writes


def test_failed_write_leaves_nothing_behind(tmp_path, rng, monkeypatch):
    arrays = make_arrays(rng, 3, 2)
    path = write_chunk(tmp_path / "chunk_000000.npz", arrays, make_meta(2))
    before = path.read_bytes()

    def crash(f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # a crash mid-write

    monkeypatch.setattr(np, "savez_compressed", crash)
    with pytest.raises(KeyboardInterrupt):
        write_chunk(path, make_arrays(rng, 3, 2), make_meta(2))
    with pytest.raises(KeyboardInterrupt):
        write_chunk(tmp_path / "chunk_000001.npz", arrays, make_meta(2))
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunk_000000.npz"]


def test_invalid_arrays_are_not_written(tmp_path, rng):
    good = make_arrays(rng, 3, 2)
    cases = [
        ("reward", dict(good, reward=np.arange(6)), "float32"),
        ("reward", dict(good, reward=np.float32(1.0)), "scalar"),
        ("action", dict(good, action=good["action"] + 0.5), "integer"),
        ("done", dict(good, done=np.zeros(6, np.int8)), "bool"),
        ("next_obs", dict(good, next_obs=good["obs"][:, :3]), "differs from obs"),
        ("log_prob", dict(good, log_prob=np.zeros(5, np.float32)), "5 rows"),
        ("hidden_state", dict(good, hidden_state=np.zeros(6, np.float32)), r"\(N, H\) or \(N, T, H\)"),
        ("text_obs", dict(good, text_obs=np.array([1, "a", 2, 3, 4, 5], object)), "non-strings"),
        ("achievements", dict(good, achievements=np.zeros((6, 2), bool)), "achievement_names"),
        ("bogus", dict(good, bogus=np.zeros(6)), "unknown key"),
        ("action", {k: v for k, v in good.items() if k != "action"}, "missing required key"),
    ]
    for field, arrays, message in cases:
        with pytest.raises(DataFileError, match=message) as err:
            write_chunk(tmp_path / "c.npz", arrays, make_meta(2))
        assert err.value.field == field and "c.npz" in str(err.value)
    with pytest.raises(DataFileError, match="multiple of num_envs"):
        write_chunk(tmp_path / "c.npz", good, make_meta(4))
    with pytest.raises(DataFileError, match=r"\[0, 1\]"):
        write_chunk(tmp_path / "c.npz", dict(good, obs=np.full((6, 2, 2, 3), 2.0)), make_meta(2, pixels=True))
    assert not any(tmp_path.iterdir())


def test_meta_is_validated():
    with pytest.raises(ValueError, match="num_envs"):
        ChunkMeta(env_name="x", num_envs=0, obs_kind="symbolic")
    with pytest.raises(ValueError, match="obs_kind"):
        ChunkMeta(env_name="x", num_envs=1, obs_kind="rgb")
    with pytest.raises(ValueError, match="spec_json"):
        ChunkMeta(env_name="x", num_envs=1, obs_kind="symbolic", spec_json="{not json")
    meta = make_meta(2, spec=SPEC)
    assert ChunkMeta.from_json(meta.to_json()) == meta
    with pytest.raises(DataFileError, match=r"f.npz: meta: ChunkMeta: unknown fields \['colour'\]"):
        ChunkMeta.from_json(json.dumps(dict(json.loads(meta.to_json()), colour=1)), "f.npz")
    with pytest.raises(DataFileError, match="schema_version"):
        ChunkMeta.from_json(json.dumps(dict(json.loads(meta.to_json()), schema_version=99)), "f.npz")
    with pytest.raises(DataFileError, match="spec_hash"):
        ChunkMeta.from_json(json.dumps(dict(json.loads(meta.to_json()), spec_hash="0" * 12)), "f.npz")


# ------------------------------------------------------------------------- malformed files


def _raw_chunk(path, arrays, chunk_meta, **overrides):
    """Write a file with np.savez directly, bypassing hsrl's writer checks."""
    members = {**arrays, "meta": np.array(chunk_meta.to_json()), **overrides}
    np.savez(path, **{k: v for k, v in members.items() if v is not None})
    return path


def test_reader_names_file_and_field(tmp_path, rng):
    arrays = {k: np.asarray(v) for k, v in make_arrays(rng, 3, 2, text=False).items()}
    arrays["action"] = arrays["action"].astype(np.int32)
    meta = make_meta(2)
    cases = {
        "done": dict(done=np.zeros(6, np.float32)),
        "reward": dict(reward=np.zeros((6, 1), np.float32)),
        "action": dict(action=np.zeros(6, np.float32)),
        "obs": dict(obs=None),
        "meta": dict(meta=None),
        "hidden_state": dict(hidden_state=np.zeros((5, 3), np.float32)),
        "text_obs": dict(text_obs=np.zeros(6, "S3")),  # bytes, not unicode
    }
    for field, override in cases.items():
        path = _raw_chunk(tmp_path / f"bad_{field}.npz", arrays, meta, **override)
        with pytest.raises(DataFileError) as err:
            read_chunk(path)
        assert err.value.field == field, str(err.value)
        assert f"bad_{field}.npz" in str(err.value)
    path = _raw_chunk(tmp_path / "meta_json.npz", arrays, meta, meta=np.array("{oops"))
    with pytest.raises(DataFileError, match="meta: not valid JSON"):
        read_chunk(path)


def test_object_arrays_are_never_unpickled(tmp_path, rng):
    arrays = make_arrays(rng, 3, 2, text=False)
    path = _raw_chunk(tmp_path / "pickled.npz", arrays, make_meta(2),
                      text_obs=np.array(["a", None, "c", "d", "e", "f"], dtype=object))
    with pytest.raises(DataFileError, match="text_obs: object dtype"):
        read_chunk(path)


def test_truncated_and_corrupt_files(tmp_path, rng):
    arrays = make_arrays(rng, 64, 4)  # big enough that the middle of the file is array data
    path = write_chunk(tmp_path / "c.npz", arrays, make_meta(4))
    data = path.read_bytes()
    for size in (0, 10, len(data) // 2, len(data) - 10):
        bad = tmp_path / f"trunc_{size}.npz"
        bad.write_bytes(data[:size])
        with pytest.raises(DataFileError, match="corrupt or truncated") as err:
            read_chunk(bad)
        assert bad.name in str(err.value)
    with zipfile.ZipFile(path) as zf:
        obs = zf.getinfo("obs.npy")
    for offset in (200, obs.compress_size // 2, obs.compress_size - 8):
        flipped = bytearray(data)
        flipped[obs.header_offset + 30 + len("obs.npy") + offset] ^= 0xFF
        bad = tmp_path / f"flip_{offset}.npz"
        bad.write_bytes(bytes(flipped))
        with pytest.raises(DataFileError, match="corrupt or truncated") as err:
            read_chunk(bad)
        assert err.value.field == "obs"
    with pytest.raises(FileNotFoundError):
        read_chunk(tmp_path / "missing.npz")


# ---------------------------------------------------------------------------------- folders


def test_list_chunks_orders_by_index(tmp_path, rng):
    for i in (10, 2, 0):
        write_chunk(chunk_path(tmp_path, i), make_arrays(rng, 2, 1), make_meta(1))
    (tmp_path / "stats.json").write_text("{}")
    (tmp_path / ".chunk_000011.npz.abc.tmp").write_bytes(b"partial")
    assert [p.name for p in list_chunks(tmp_path)] == ["chunk_000000.npz", "chunk_000002.npz", "chunk_000010.npz"]
    (tmp_path / "chunk_2.npz").write_bytes(b"")
    with pytest.raises(DataFileError, match="index 2"):
        list_chunks(tmp_path)
    with pytest.raises(DataFileError, match="no chunk files"):
        list_chunks(tmp_path / "..")
    with pytest.raises(FileNotFoundError):
        list_chunks(tmp_path / "nope")


# ---------------------------------------------------------------------------------- dataset


def test_load_dataset_concatenates_requested_keys(tmp_path, rng):
    written = make_dataset(tmp_path, rng, pixels=True, spec=SPEC,
                           hidden=lambda n: rng.standard_normal((n, 8)).astype(np.float16))
    keys = ["obs", "action", "hidden_state", "text_obs"]
    ds = load_dataset(tmp_path, keys, hidden_dtype=np.float32, show_progress=False)
    assert set(ds.arrays) == set(keys) and len(ds) == 3 * 21
    assert ds["obs"].dtype == np.uint8 and ds["hidden_state"].dtype == np.float32
    for key in keys:
        expected = np.concatenate([read_chunk(p)[key] for p in list_chunks(tmp_path)])
        np.testing.assert_array_equal(ds[key], expected.astype(ds[key].dtype))
    np.testing.assert_array_equal(ds.offsets, [0, 21, 42, 63])
    batch = ds.batch(np.array([0, 30, 62]))
    assert batch["obs"].dtype == np.float32
    np.testing.assert_allclose(batch["obs"][1], written[1]["obs"][9], atol=PIXEL_ROUNDTRIP_MAX_ERROR + 1e-7)


def test_load_dataset_streams_in_blocks(tmp_path, rng, monkeypatch):
    make_dataset(tmp_path, rng, hidden=lambda n: rng.standard_normal((n, 2, 8)).astype(np.float32))
    monkeypatch.setattr(chunks_mod, "_BLOCK_BYTES", 40)  # force many small steps through both read paths
    monkeypatch.setattr(dataset_mod, "POOL_BLOCK_BYTES", 40)
    with pytest.raises(DataFileError, match="per-token"):  # no hidden_tokens
        load_dataset(tmp_path, ["hidden_state"], show_progress=False)
    full = load_dataset(tmp_path, ["hidden_state", "obs"], per_token=True, show_progress=False)
    assert full["hidden_state"].shape == (63, 2, 8)
    with pytest.raises(ValueError, match="could not broadcast") as err:  # the caller's bug, not a corrupt file
        with chunks_mod.ChunkReader(list_chunks(tmp_path)[0]) as reader:
            reader.read("hidden_state", np.empty((21, 8), np.float32), lambda h: h)
    assert not isinstance(err.value, DataFileError)
    pooled = load_dataset(tmp_path, ["hidden_state"], all_tokens_valid=True, show_progress=False)
    np.testing.assert_allclose(pooled["hidden_state"], full["hidden_state"].mean(axis=1), rtol=1e-6)
    expected = np.concatenate([read_chunk(p)["obs"] for p in list_chunks(tmp_path)])
    np.testing.assert_array_equal(full["obs"], expected)


# ------------------------------------------------------------------------------------- per-token hidden states


def write_token_files(folder, rng, widths, *, hidden_size=8, spec=SPEC, counts=True, padding=0.0, dtypes=None):
    """One chunk per entry of `widths` (7 steps x 3 envs), per-token hidden states of that width; returns the
    (states, counts) written."""
    written = []
    for i, width in enumerate(widths):
        states, valid = token_states(rng, 21, width, hidden_size, padding=padding,
                                     dtype=(dtypes or [np.float16] * len(widths))[i])
        arrays = make_arrays(rng, 7, 3)
        arrays["hidden_state"] = states
        if counts:
            arrays["hidden_tokens"] = valid
        else:
            valid = np.full(21, width, np.int32)
        write_chunk(chunk_path(folder, i), arrays, make_meta(3, first_step=7 * i, spec=spec))
        written.append((states, valid))
    return written


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_per_token_states_are_read_as_labelling_pools_them(tmp_path, rng, monkeypatch, pooling):
    spec = json.dumps(dict(json.loads(SPEC), tokens=6, pooling=pooling))
    # files padded to different widths (labelling pads each file to its longest row), float16 and float32; padding
    # filled with garbage, so a reader that pools padding (a mean over all T) is far off
    written = write_token_files(tmp_path, rng, [6, 3, 5], spec=spec, padding=7.0,
                                dtypes=[np.float16, np.float32, np.float16])
    monkeypatch.setattr(dataset_mod, "POOL_BLOCK_BYTES", 4 * 6 * 8 * 2)  # several blocks per file, one cut mid-file
    ds = load_dataset(tmp_path, ["hidden_state", "obs"], show_progress=False)
    assert ds["hidden_state"].shape == (63, 8) and ds["hidden_state"].dtype == np.float32
    labelled = np.concatenate([labelling_pool(s, c, pooling) for s, c in written])  # what pooled labelling stores
    np.testing.assert_allclose(ds["hidden_state"], labelled, rtol=1e-6, atol=1e-6)
    reference = np.concatenate([pooled_reference(s, c, pooling) for s, c in written])  # the definition, float64
    np.testing.assert_allclose(ds["hidden_state"], reference, rtol=1e-6, atol=1e-6)
    over_all = np.concatenate([s.astype(np.float64).mean(axis=1) for s, _ in written])
    assert np.abs(ds["hidden_state"] - over_all).max() > 1.0  # the padding really is garbage
    # the same through the block-free reader of one file
    with chunks_mod.ChunkReader(chunk_path(tmp_path, 1)) as reader:
        np.testing.assert_allclose(read_pooled_hidden(reader), labelled[21:42], rtol=1e-6, atol=1e-6)
    full = load_dataset([chunk_path(tmp_path, 0)], ["hidden_state", "hidden_tokens"], per_token=True,
                        show_progress=False)
    np.testing.assert_array_equal(full["hidden_state"], written[0][0])
    np.testing.assert_array_equal(full["hidden_tokens"], written[0][1])


def test_per_token_states_without_counts_need_all_tokens_valid(tmp_path, rng):
    written = write_token_files(tmp_path, rng, [4, 4], counts=False)
    with pytest.raises(DataFileError, match="hidden_tokens") as err:
        load_dataset(tmp_path, ["hidden_state"], show_progress=False)
    message = str(err.value)
    assert "\n" not in message and "chunk_000000.npz" in message and "--all-tokens-valid" in message
    ds = load_dataset(tmp_path, ["hidden_state"], all_tokens_valid=True, show_progress=False)
    reference = np.concatenate([s.astype(np.float64).mean(axis=1) for s, _ in written])
    np.testing.assert_allclose(ds["hidden_state"], reference, rtol=1e-6, atol=1e-6)
    # the second file alone lacking counts is named, before anything is read
    (tmp_path / "mixed").mkdir()
    write_token_files(tmp_path / "mixed", rng, [4])
    os.replace(chunk_path(tmp_path, 1), chunk_path(tmp_path / "mixed", 1))
    with pytest.raises(DataFileError, match="chunk_000001.npz: hidden_tokens: missing"):
        load_dataset(tmp_path / "mixed", ["hidden_state"], show_progress=False)


def test_bad_token_counts_are_refused(tmp_path, rng):
    states, counts = token_states(rng, 21, 4, 8)
    arrays = dict(make_arrays(rng, 7, 3), hidden_state=states, hidden_tokens=np.where(np.arange(21) == 5, 0, counts))
    write_chunk(chunk_path(tmp_path, 0), arrays, make_meta(3, spec=SPEC))
    with pytest.raises(DataFileError, match=r"hidden_tokens: rows \[5\] count \[0\] tokens"):
        load_dataset(tmp_path, ["hidden_state"], show_progress=False)


def test_pooling_never_holds_the_per_token_array(tmp_path, rng, monkeypatch):
    import tracemalloc

    import hsrl.llm.pooling  # noqa: F401  (imports torch: not counted below)

    n, width, size = 512, 64, 32  # per-token (N, T, H) float32 would be 4 MiB; pooled (N, H) is 64 KiB
    states, counts = token_states(rng, n, width, size)
    arrays = dict(make_arrays(rng, n // 4, 4, text=False), hidden_state=states, hidden_tokens=counts)
    write_chunk(chunk_path(tmp_path, 0), arrays, make_meta(4, spec=SPEC))
    monkeypatch.setattr(dataset_mod, "POOL_BLOCK_BYTES", 5 * width * size * 2)  # 5 rows a step: 103 steps
    tracemalloc.start()
    try:
        ds = load_dataset(tmp_path, ["hidden_state"], show_progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_allclose(ds["hidden_state"], labelling_pool(states, counts), rtol=1e-6, atol=1e-6)
    assert peak < n * width * size * 2 / 4, f"peak {peak} bytes: the (N, T, H) array was read whole"


def test_pooled_states_are_cached_memory_mapped(tmp_path, rng, monkeypatch):
    data, cache = tmp_path / "data", tmp_path / "cache"
    data.mkdir()
    written = write_token_files(data, rng, [5, 5])
    first = load_dataset(data, ["hidden_state", "action"], cache_dir=cache, show_progress=False)
    assert isinstance(first["hidden_state"], np.memmap) and first["hidden_state"].shape == (42, 8)
    np.testing.assert_allclose(first["hidden_state"], np.concatenate([labelling_pool(s, c) for s, c in written]),
                               rtol=1e-6, atol=1e-6)
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["pooled"] == ["hidden_state"] and manifest["pool"] == dataset_mod.POOL_METHOD
    assert manifest["per_token"] is False and manifest["all_tokens_valid"] is False

    def no_reads(*args, **kwargs):
        raise AssertionError("a valid cache must not read the chunks")

    with monkeypatch.context() as m:
        m.setattr(dataset_mod, "ChunkReader", no_reads)
        again = load_dataset(data, ["hidden_state", "action"], cache_dir=cache, show_progress=False)
    np.testing.assert_array_equal(again["hidden_state"], first["hidden_state"])
    # per-token loading is another cache: rebuilt, (N, T, H)
    full = load_dataset(data, ["hidden_state", "action"], per_token=True, cache_dir=cache, show_progress=False)
    assert full["hidden_state"].shape == (42, 5, 8)
    assert json.loads((cache / "manifest.json").read_text())["pooled"] == []


def test_hidden_layout_reads_headers_only(tmp_path, rng, monkeypatch):
    (tmp_path / "tok").mkdir(), (tmp_path / "bare").mkdir(), (tmp_path / "pooled").mkdir()
    write_token_files(tmp_path / "tok", rng, [3], hidden_size=6)
    write_token_files(tmp_path / "bare", rng, [3], hidden_size=6, counts=False)
    make_dataset(tmp_path / "pooled", rng, files=1, hidden=lambda n: np.zeros((n, 5), np.float32))
    with monkeypatch.context() as m:  # no array data is decompressed
        m.setattr(chunks_mod.ChunkReader, "_read", _meta_only(chunks_mod.ChunkReader._read))
        assert hidden_layout(tmp_path / "tok") == (True, True, 6)
        assert hidden_layout(tmp_path / "bare") == HiddenLayout(per_token=True, has_token_counts=False, hidden_size=6)
        assert hidden_layout(tmp_path / "pooled") == (False, False, 5)
    unlabelled = tmp_path / "unlabelled"
    unlabelled.mkdir()
    make_dataset(unlabelled, rng, files=1)
    with pytest.raises(DataFileError, match="hidden_state: missing"):
        hidden_layout(unlabelled)


def _meta_only(read):
    def guarded(self, key, *args, **kwargs):
        if key != "meta":
            raise AssertionError(f"read {key}")
        return read(self, key, *args, **kwargs)

    return guarded


def test_load_dataset_memory_mapped_cache(tmp_path, rng, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    make_dataset(data, rng)
    first = load_dataset(data, ["obs", "reward", "text_obs"], cache_dir=tmp_path / "cache", show_progress=False)
    assert isinstance(first["obs"], np.memmap) and not first["obs"].flags.writeable
    expected = np.concatenate([read_chunk(p)["obs"] for p in list_chunks(data)])
    np.testing.assert_array_equal(first["obs"], expected)

    def no_reads(*args, **kwargs):
        raise AssertionError("a valid cache must not read the chunks")

    with monkeypatch.context() as m:
        m.setattr(dataset_mod, "ChunkReader", no_reads)
        again = load_dataset(data, ["obs", "reward", "text_obs"], cache_dir=tmp_path / "cache", show_progress=False)
    np.testing.assert_array_equal(again["text_obs"], first["text_obs"])
    assert again.files == first.files and again.meta == first.meta
    os.utime(list_chunks(data)[1], ns=(1, 1))  # a changed source invalidates the cache
    with monkeypatch.context() as m:
        m.setattr(dataset_mod, "ChunkReader", no_reads)
        with pytest.raises(AssertionError, match="must not read"):
            load_dataset(data, ["obs", "reward", "text_obs"], cache_dir=tmp_path / "cache", show_progress=False)


def test_load_dataset_refuses_mixed_data(tmp_path, rng):
    make_dataset(tmp_path, rng, files=2, spec=SPEC, hidden=lambda n: np.zeros((n, 4), np.float32))
    other = json.dumps(dict(json.loads(SPEC), layer=3))
    write_chunk(chunk_path(tmp_path, 2), make_arrays(rng, 7, 3, hidden=lambda n: np.zeros((n, 4), np.float32)),
                make_meta(3, first_step=14, spec=other))
    with pytest.raises(DataFileError, match=r"chunk_000002.npz: meta: extraction spec differs .* \['layer'\]"):
        load_dataset(tmp_path, ["hidden_state"], show_progress=False)
    with pytest.raises(DataFileError, match="return_to_go: missing"):
        load_dataset(list_chunks(tmp_path)[:2], ["return_to_go"], show_progress=False)


def test_a_full_disk_is_one_error_naming_the_folder(tmp_path, rng, monkeypatch):
    import errno

    from hsrl.atomic import DiskFullError

    def full(f, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", full)
    with pytest.raises(DiskFullError, match=f"no space left in {tmp_path} while writing chunk_000000.npz"):
        write_chunk(tmp_path / "chunk_000000.npz", make_arrays(rng, 3, 2), make_meta(2))
    assert list(tmp_path.iterdir()) == []


def _rewrite_member(path, key, array_bytes_and_header):
    """Rewrite one member of an npz (zip) with other bytes, keeping the rest: a tampered file."""
    members = {}
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            members[name] = zf.read(name)
    members[key + ".npy"] = array_bytes_and_header
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def test_a_header_declaring_more_rows_than_stored_is_refused_before_allocating(tmp_path, rng):
    import io

    path = write_chunk(tmp_path / "chunk_000000.npz", make_arrays(rng, 4, 2), make_meta(2))
    with zipfile.ZipFile(path) as zf:
        raw = zf.read("reward.npy")
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**9,)})
    _rewrite_member(path, "reward", header.getvalue() + raw[len(header.getvalue()):])  # claims 1e9 rows
    with pytest.raises(DataFileError, match=r"chunk_000000.npz.*reward.*declares shape \(1000000000,\)"):
        inspect_chunk(path)


def test_a_file_with_another_row_shape_is_named(tmp_path, rng):
    from hsrl.data import dataset_stats, load_dataset

    make_dataset(tmp_path, rng, files=3, hidden=lambda n: rng.standard_normal((n, 6)).astype(np.float32))
    bad = list_chunks(tmp_path)[1]
    chunk = read_chunk(bad)
    write_chunk(bad, {**chunk.arrays, "hidden_state": chunk["hidden_state"][:, :5]}, chunk.meta)
    for load_all in (lambda: dataset_stats(tmp_path, show_progress=False),
                 lambda: load_dataset(tmp_path, ["obs", "hidden_state"], show_progress=False)):
        with pytest.raises(DataFileError, match=f"{bad.name}.*hidden_state.*rows of shape \\(5,\\), but chunk_000000"):
            load_all()


def test_observations_of_another_width_than_the_env_are_refused(tmp_path, rng):
    arrays = make_arrays(rng, 4, 2)
    short = {**arrays, "obs": arrays["obs"][:, :1344], "next_obs": arrays["next_obs"][:, :1344]}
    with pytest.raises(DataFileError, match=r"obs.*rows of shape \(1344,\), but Craftax-Classic-Symbolic-v1 "
                                            r"observations are \(1345,\)"):
        write_chunk(tmp_path / "chunk_000000.npz", short, make_meta(2))
    path = write_chunk(tmp_path / "chunk_000000.npz", arrays, make_meta(2))
    with zipfile.ZipFile(path) as zf:  # a file written by other code: the reader refuses it too
        members = {name: zf.read(name) for name in zf.namelist()}
    for key in ("obs", "next_obs"):
        import io
        buf = io.BytesIO()
        np.save(buf, short[key])
        members[key + ".npy"] = buf.getvalue()
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    with pytest.raises(DataFileError, match="chunk_000000.npz.*obs.*1344"):
        inspect_chunk(path)
