"""The content-addressed hidden-state cache (`hsrl.llm.cache`) through the extractor: the same outputs with it on
and off, duplicates computed once, corrupt and foreign entries recomputed, a cache folder shared by processes; a
damaged cache file (truncated, flipped bytes, garbage, damaged meta pages) or a full disk never stops a run."""

import json
import os
import random
import shutil
import struct
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from hsrl.errors import InputError
from hsrl.llm import ExtractionSpec, make_extractor
from hsrl.llm.cache import (CachedState, CacheWarning, DamagedCache, StateCache, _open_lmdb, check_lmdb_file,
                            decode_value, encode_value, entry_key)
from hsrl.llm.flags import CacheFlags
from hsrl.llm.models import load_model
from llm_helpers import OBS
from tiny_qwen import build_tiny_qwen

ATOL = 2e-5  # batch composition changes padding, hence the last float bits (as in test_llm_qwen)
BATCH = OBS + [OBS[0], OBS[2], OBS[0]]  # 7 samples, 4 distinct


@pytest.fixture(scope="module")
def minilm():
    return load_model("minilm")


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    return load_model(str(build_tiny_qwen(tmp_path_factory.mktemp("qwen"), num_layers=2)))


def counting(extractor):
    """Record the number of rows each backend call computes (the real backend still runs)."""
    calls = []
    for name in ("_run_prefill", "_run_generation"):
        original = getattr(extractor, name)

        def wrapped(rows, *args, _original=original, **kwargs):
            calls.append(len(rows))
            return _original(rows, *args, **kwargs)

        setattr(extractor, name, wrapped)
    return calls


def assert_same(a, b, exact: bool):
    assert a.layers == b.layers
    for layer in a.layers:
        if exact:
            np.testing.assert_array_equal(a.hidden[layer], b.hidden[layer])
        else:
            np.testing.assert_allclose(a.hidden[layer], b.hidden[layer], atol=ATOL)
    assert a.generated_ids == b.generated_ids and a.generated_text == b.generated_text
    np.testing.assert_array_equal(a.num_tokens, b.num_tokens)
    np.testing.assert_array_equal(a.prompt_tokens, b.prompt_tokens)
    np.testing.assert_array_equal(a.finished, b.finished)


@pytest.mark.parametrize("which,spec_kw", [
    ("minilm", {}),
    ("qwen", {"tokens": 4, "temperature": 0.8}),  # generation: text and ids cached too
    ("qwen", {"layer": 1}),  # prompt-only, another layer
])
def test_cache_on_equals_off_and_duplicates_run_once(request, which, spec_kw):
    model = request.getfixturevalue(which)
    spec = ExtractionSpec(model=model.path, **spec_kw)
    off = make_extractor(spec, model=model)
    on = make_extractor(spec, model=model, cache=StateCache())
    plain = off.extract(BATCH)
    calls = counting(on)
    cold = on.extract(BATCH)
    assert calls == [4] and on.cache.counts() == {"hits": 3, "misses": 4, "rejected": 0}  # 3 in-batch duplicates
    assert_same(plain, cold, exact=False)
    if spec.generates:
        assert all(len(ids) > 0 for ids in cold.generated_ids)
    warm = on.extract(BATCH[::-1])
    assert calls == [4] and on.cache.hits == 10  # nothing computed again
    assert_same(cold, on.extract(BATCH), exact=True)
    np.testing.assert_array_equal(warm.hidden_state, cold.hidden_state[::-1])
    # asking for two layers is another entry (computed), not a reuse of the one-layer entry
    both = on.extract(OBS[:2], layers=[0, spec.layer])
    assert calls == [4, 2]
    np.testing.assert_allclose(both.hidden[spec.layer], plain.hidden_state[:2], atol=ATOL)


def test_disk_cache_across_instances_and_bad_entries_recomputed(minilm, tmp_path):
    spec = ExtractionSpec(model="minilm")
    first = make_extractor(spec, model=minilm, cache=StateCache(tmp_path / "cache"))
    reference = first.extract(OBS)
    # a new cache object (empty memory) on the same folder reads every state from disk
    second = make_extractor(spec, model=minilm, cache=StateCache(tmp_path / "cache"))
    calls = counting(second)
    np.testing.assert_array_equal(second.extract(OBS).hidden_state, reference.hidden_state)
    assert calls == [] and second.cache.counts() == {"hits": 4, "misses": 0, "rejected": 0}

    env = _open_lmdb(tmp_path / "cache", 1 << 30)
    with env.begin() as txn:
        keys = sorted(k for k, _ in txn.cursor())
        values = {k: txn.get(k) for k in keys}
    assert len(keys) == 4
    H = minilm.hidden_size
    with env.begin(write=True) as txn:
        flipped = bytearray(values[keys[0]])
        flipped[-3] ^= 0xFF  # a flipped bit in the stored floats: checksum fails
        txn.put(keys[0], bytes(flipped))
        txn.put(keys[1], values[keys[2]])  # another input's entry under this key
        txn.put(keys[2], encode_value(keys[2], CachedState(np.ones((1, H - 1), np.float32))))  # wrong shape
        foreign = keys[3].replace(first.spec.hash.encode(), b"0123456789ab")
        assert foreign != keys[3]  # another spec's entry
        txn.put(keys[3], encode_value(foreign, CachedState(np.ones((1, H), np.float32))))
    third = make_extractor(spec, model=minilm, cache=StateCache(tmp_path / "cache"))
    calls = counting(third)
    again = third.extract(OBS)
    assert calls == [4] and third.cache.rejected == 4
    np.testing.assert_allclose(again.hidden_state, reference.hidden_state, atol=ATOL)
    # the recomputed entries were written back: a fresh reader finds them all valid
    fourth = StateCache(tmp_path / "cache")
    keys_now = [k for k in keys]
    found = fourth.get_many(keys_now, (1, H))
    assert fourth.rejected == 0 and all(s is not None for s in found)


WORKER = """
import json, sys
import numpy as np
from hsrl.llm import ExtractionSpec, make_extractor
from hsrl.llm.cache import StateCache
from llm_helpers import OBS
texts = [t + f"\\nnote {i}" for i in range(int(sys.argv[2]), int(sys.argv[3])) for t in OBS[:2]]
ex = make_extractor(ExtractionSpec(model="minilm"), device="cpu", cache=StateCache(sys.argv[1]))
for _ in range(2):
    states = ex.extract(texts).hidden_state
np.save(sys.argv[4], states)
print(json.dumps(ex.cache.counts()))
"""


def test_two_processes_share_a_cache_folder(tmp_path):
    folder = tmp_path / "shared"
    env = {"PYTHONPATH": f"{Path(__file__).parent}:{Path(__file__).parents[1] / 'src'}"}
    import os

    env = {**os.environ, **env}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(folder), lo, hi, str(tmp_path / f"{name}.npy")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for name, lo, hi in (("a", "0", "6"), ("b", "3", "9"))]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
        counts = json.loads(out.strip().splitlines()[-1])
        assert counts["rejected"] == 0 and counts["hits"] >= 12  # the second pass at least
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    np.testing.assert_allclose(a[6:], b[:6], atol=ATOL)  # notes 3..5 computed by either process
    # a third process (here) reads all 18 distinct states from disk, none partial or rejected
    minilm_ex = make_extractor(ExtractionSpec(model="minilm"), device="cpu", cache=StateCache(folder))
    calls = counting(minilm_ex)
    texts = [t + f"\nnote {i}" for i in range(9) for t in OBS[:2]]
    states = minilm_ex.extract(texts).hidden_state
    assert calls == [] and minilm_ex.cache.counts() == {"hits": 18, "misses": 0, "rejected": 0}
    np.testing.assert_array_equal(states[:12], a)
    np.testing.assert_array_equal(states[6:], b)


def test_cache_flags(tmp_path):
    assert CacheFlags(no_cache=True).state_cache() is None
    assert CacheFlags().state_cache().path is None
    assert CacheFlags(cache=str(tmp_path / "c")).state_cache().path == tmp_path / "c"
    with pytest.raises(InputError, match="contradict"):
        CacheFlags(cache=str(tmp_path), no_cache=True).state_cache()
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a directory"):
        CacheFlags(cache=str(tmp_path / "file")).state_cache()


# ------------------------------------------------------------------ a damaged cache file or a full disk: one warning

TEXTS = OBS + [t + f"\nnote {i}" for i in range(10) for t in OBS[:2]]  # 24 distinct samples
TESTS = Path(__file__).parent


def _env():
    return {**os.environ, "PYTHONPATH": f"{TESTS}:{TESTS.parent / 'src'}"}


def damage(folder: Path, how: str, seed: int = 0) -> None:
    """Damage the cache's data.mdb as a crash, a bad disk or a careless user would."""
    data = folder / "data.mdb"
    raw = bytearray(data.read_bytes())
    rng = random.Random(seed)
    psize = struct.unpack_from("<I", raw, 40)[0]  # meta page 0: the free DB's md_pad
    if how == "truncated":
        os.truncate(data, len(raw) // 2)
        return
    if how == "flipped":  # random bits anywhere: meta pages, branch and leaf pages, stored values, free space
        for _ in range(rng.choice((1, 4, 32, 256))):
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
    elif how == "garbage":
        raw = bytearray(rng.randbytes(len(raw)))
    elif how.startswith("meta"):  # meta0 / meta1: the magic and version, or the last page used, of one meta page
        at = int(how[4]) * psize + 16
        if how.endswith("size"):
            raw[at + 120 : at + 128] = struct.pack("<Q", len(raw) // psize + 5)
        else:
            raw[at : at + 8] = rng.randbytes(8)
    data.write_bytes(bytes(raw))


DAMAGED_RUN = """
import json, sys, warnings
import numpy as np
from hsrl.llm import ExtractionSpec, make_extractor
from hsrl.llm.cache import CacheWarning, StateCache
from hsrl.llm.models import load_model
from test_llm_cache import TEXTS
model = load_model("minilm")
spec = ExtractionSpec(model="minilm")
plain = make_extractor(spec, model=model).extract(TEXTS).hidden_state
for folder in sys.argv[1:]:
    print(json.dumps({"starting": folder}), flush=True)  # a crash names its case
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ex = make_extractor(spec, model=model, cache=StateCache(folder))
        got = [ex.extract(TEXTS[i : i + 7]).hidden_state for i in range(0, len(TEXTS), 7)]
        second = make_extractor(spec, model=model, cache=StateCache(folder))  # a new cache object: reads the disk
        again = second.extract(TEXTS).hidden_state
    diff = max(float(np.abs(np.concatenate(got) - plain).max()), float(np.abs(again - plain).max()))
    print(json.dumps({"folder": folder, "warnings": [str(w.message) for w in caught if w.category is CacheWarning],
                      "other": [str(w.message) for w in caught if w.category is not CacheWarning],
                      "diff": diff, "counts": second.cache.counts(), "off": ex.cache.disk_error}), flush=True)
"""


@pytest.fixture(scope="module")
def filled_cache(minilm, tmp_path_factory):
    """A cache folder holding TEXTS' states, written in several transactions (branch, leaf and free pages)."""
    folder = tmp_path_factory.mktemp("filled") / "cache"
    ex = make_extractor(ExtractionSpec(model="minilm"), model=minilm, cache=StateCache(folder))
    for i in range(0, len(TEXTS), 5):
        ex.extract(TEXTS[i : i + 5])
    check_lmdb_file(folder / "data.mdb")
    return folder


def test_damaged_cache_files_give_one_warning_and_the_uncached_states(filled_cache, tmp_path):
    cases = {"truncated": 0, "garbage": 0, "meta0": 0, "meta1": 1, "meta1size": 0}
    cases.update({f"flipped{seed}": seed for seed in range(12)})
    folders = []
    for name, seed in cases.items():
        folder = tmp_path / name
        shutil.copytree(filled_cache, folder)
        damage(folder, name.rstrip("0123456789") if name.startswith("flipped") else name, seed)
        folders.append(folder)
    # in a child process: were LMDB to map a truncated file, SIGBUS would kill the process, not fail a test
    proc = subprocess.run([sys.executable, "-c", DAMAGED_RUN, *map(str, folders)], capture_output=True, text=True,
                          env=_env(), timeout=800)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0, f"crashed (exit {proc.returncode}) on {lines[-1] if lines else '?'}: {proc.stderr[-2000:]}"
    results = {Path(r["folder"]).name: r for r in lines if "folder" in r}
    assert sorted(results) == sorted(cases)
    for name, r in results.items():
        assert r["diff"] <= ATOL, (name, r)  # the states of an uncached run
        assert len(r["warnings"]) <= 1 and not r["other"], (name, r)
        moved = sorted(p.name for p in tmp_path.glob(f"{name}.damaged-*"))
        if name in ("truncated", "garbage", "meta0", "meta1", "meta1size"):  # refused before LMDB maps the file
            assert len(r["warnings"]) == 1 and "is damaged" in r["warnings"][0] and moved, (name, r)
        if moved:  # moved aside with its warning; the fresh cache in its place is sound and holds every state
            assert len(moved) == 1 and moved[0] in r["warnings"][0], (name, r)
            check_lmdb_file(tmp_path / name / "data.mdb")
            assert r["counts"]["hits"] == len(TEXTS) and r["off"] is None, (name, r)
    assert "truncated?" in results["truncated"]["warnings"][0]
    assert sum(bool(r["warnings"]) for r in results.values()) >= 6  # the flips did hit LMDB's pages


def test_check_lmdb_file_refuses_what_lmdb_cannot_map_safely(filled_cache, tmp_path):
    check_lmdb_file(tmp_path / "missing.mdb")  # LMDB makes a new one
    (tmp_path / "empty.mdb").write_bytes(b"")
    check_lmdb_file(tmp_path / "empty.mdb")
    for how, match in (("truncated", "truncated"), ("garbage", "meta page 0"), ("meta1", "meta page 1"),
                       ("meta0size", "truncated")):
        folder = tmp_path / how
        shutil.copytree(filled_cache, folder)
        damage(folder, how)
        with pytest.raises(DamagedCache, match=match):
            check_lmdb_file(folder / "data.mdb")
    (tmp_path / "short.mdb").write_bytes((filled_cache / "data.mdb").read_bytes()[:100])
    with pytest.raises(DamagedCache, match="shorter"):
        check_lmdb_file(tmp_path / "short.mdb")


def test_a_rerun_on_a_moved_aside_cache_finds_a_fresh_cache_without_warning(filled_cache, tmp_path):
    folder = tmp_path / "c"
    shutil.copytree(filled_cache, folder)
    damage(folder, "truncated")
    code = "import sys; from hsrl.llm.cache import StateCache; StateCache(sys.argv[1])"
    runs = [subprocess.run([sys.executable, "-W", "always", "-c", code, str(folder)], capture_output=True, text=True,
                           env=_env(), timeout=300) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr[-2000:]
    first = runs[0].stderr.strip().splitlines()
    assert len(first) == 1 and "CacheWarning: state cache" in first[0] and "truncated?" in first[0]
    assert runs[1].stderr.strip() == ""
    assert len(list(tmp_path.glob("c.damaged-*"))) == 1


class _FailingEnv:
    """An LMDB environment whose reads or writes fail as a full disk or a damaged page makes them fail."""

    def __init__(self, env, error, on_write: bool):
        self.env, self.error, self.on_write = env, error, on_write

    def info(self):
        return self.env.info()

    def begin(self, write=False, **kw):
        txn = self.env.begin(write=write, **kw)
        outer = self

        class Txn:
            def __enter__(self):
                txn.__enter__()
                return self

            def __exit__(self, *exc):
                return txn.__exit__(*exc)

            def get(self, key):
                if not outer.on_write:
                    raise outer.error
                return txn.get(key)

            def put(self, key, value):
                if outer.on_write:
                    raise outer.error
                return txn.put(key, value)

        return Txn()


def _run_batches(extractor, caught):
    out = np.concatenate([extractor.extract(TEXTS[i : i + 5]).hidden_state for i in range(0, len(TEXTS), 5)])
    again = extractor.extract(TEXTS).hidden_state  # from memory: the memory level stays on
    return out, again, [w for w in caught if w.category is CacheWarning]


@pytest.mark.parametrize("failure", ["map full", "disk full", "damaged page on read"])
def test_a_full_or_failing_disk_cache_gives_one_warning_and_the_uncached_states(minilm, tmp_path, failure):
    import lmdb

    spec = ExtractionSpec(model="minilm")
    plain = make_extractor(spec, model=minilm).extract(TEXTS).hidden_state
    folder = tmp_path / "cache"
    if failure == "map full":  # a map that may not grow: puts hit MapFullError
        cache = StateCache(folder, map_size=1 << 15, max_map_size=1 << 15)
    else:
        cache = StateCache(folder)
        error = (lmdb.DiskError("mdb_txn_commit: No space left on device") if failure == "disk full"
                 else lmdb.CorruptedError("mdb_get: MDB_CORRUPTED: Located page was wrong type"))
        cache._disk.env = _FailingEnv(cache._disk.env, error, on_write=failure == "disk full")
    ex = make_extractor(spec, model=minilm, cache=cache)
    calls = counting(ex)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, again, cache_warnings = _run_batches(ex, caught)
        # another cache object on the folder in this process (e.g. another replica): no second warning
        if failure != "damaged page on read":
            make_extractor(spec, model=minilm, cache=StateCache(folder)).extract(TEXTS[:3])
        cache_warnings = [w for w in caught if w.category is CacheWarning]
    np.testing.assert_allclose(out, plain, atol=ATOL)
    np.testing.assert_array_equal(again, out)
    assert sum(calls) == len(TEXTS)  # each state computed once: the memory level still serves
    assert len(cache_warnings) == 1, [str(w.message) for w in cache_warnings]
    message = str(cache_warnings[0].message)
    assert "running without the disk cache" in message and cache.disk_error is not None
    assert {"map full": "MapFullError", "disk full": "No space left", "damaged page on read": "moved to"}[failure] in message
    assert cache._env is None
    if failure == "damaged page on read":  # moved aside: the next run starts a fresh cache
        assert len(list(tmp_path.glob("cache.damaged-*"))) == 1 and not folder.exists()
        fresh = StateCache(folder)
        assert fresh._env is not None and fresh.disk_error is None


def test_values_of_the_wrong_length_or_type_are_never_states():
    key = entry_key("spec", (0,), "a" * 40)
    good = encode_value(key, CachedState(np.arange(8, dtype=np.float32).reshape(1, 8)))
    assert decode_value(key, good, (1, 8)) is not None
    for bad in (good[:-4], good + b"\0" * 4, good[:10], b"", b"HSC1" + b"\xff" * 40,
                encode_value(key, CachedState(np.full((1, 8), np.nan, np.float32))),
                encode_value(key, CachedState(np.arange(8, dtype=np.float64).reshape(2, 4)))):
        assert decode_value(key, bad, (1, 8)) is None


LABEL = "import sys; from hsrl.cli import main; sys.exit(main(sys.argv[1:]))"


def test_hsrl_label_with_a_truncated_cache_labels_every_file_with_one_warning(tmp_path):
    from data_helpers import make_arrays, make_meta
    from hsrl.cli import main
    from hsrl.data import chunk_path, list_chunks, load_dataset, write_chunk

    raw, cache = tmp_path / "raw", tmp_path / "cache"
    raw.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):  # three files of 4 rows, each a distinct text observation
        arrays = make_arrays(rng, 2, 2)
        arrays["text_obs"] = np.array([f"{OBS[j]}\nfile {i}" for j in range(4)])
        write_chunk(chunk_path(raw, i), arrays, make_meta(2, first_step=2 * i))
    flags = ["--batch-size", "5", "--device", "cpu", "--no-progress"]
    assert main(["label", str(raw), str(tmp_path / "plain"), "--no-cache", *flags]) == 0
    plain = load_dataset(tmp_path / "plain", ["hidden_state"], show_progress=False)["hidden_state"]

    def label(out):  # in a child process: a SIGBUS fails this test, not the test run
        return subprocess.run([sys.executable, "-c", LABEL, "label", str(raw), str(tmp_path / out), "--cache",
                               str(cache), *flags], capture_output=True, text=True, env=_env(), timeout=600)

    runs = {"first": label("first")}
    damage(cache, "truncated")  # what the tester did: truncate -s $(( size / 2 )) C/data.mdb
    runs["damaged"] = label("damaged")
    runs["rerun"] = label("rerun")
    for name, run in runs.items():
        assert run.returncode == 0, (name, run.returncode, run.stderr[-3000:])
        assert len(list_chunks(tmp_path / name)) == 3
        states = load_dataset(tmp_path / name, ["hidden_state"], show_progress=False)["hidden_state"]
        np.testing.assert_allclose(states, plain, atol=ATOL, err_msg=name)
    warned = {name: [line for line in run.stderr.splitlines() if "CacheWarning" in line] for name, run in runs.items()}
    assert warned["first"] == [] and warned["rerun"] == [] and len(warned["damaged"]) == 1, warned
    assert "is damaged" in warned["damaged"][0] and "truncated?" in warned["damaged"][0]
    assert len(list(tmp_path.glob("cache.damaged-*"))) == 1
    assert "0 of 12 samples found" in runs["damaged"].stdout + runs["damaged"].stderr  # all computed
    assert "12 of 12 samples found" in runs["rerun"].stdout + runs["rerun"].stderr  # the fresh cache serves
