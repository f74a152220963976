"""The content-addressed hidden-state cache (`hsrl.llm.cache`) through the extractor: the same outputs with it on
and off, duplicates computed once, corrupt and foreign entries recomputed, a cache folder shared by processes."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hsrl.errors import InputError
from hsrl.llm import ExtractionSpec, make_extractor
from hsrl.llm.cache import CachedState, StateCache, _open_lmdb, encode_value
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
