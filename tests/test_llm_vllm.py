"""The vLLM backend against the transformers backend on a tiny random Qwen3 (float32), plus its files and commands.

Needs vLLM (`pip install -e '.[vllm]'`, see the README; `.ci/run` runs these tests in a separate environment). One
extraction engine and one generation engine are shared by the module (each starts in ~5-20 s on CPU, eager).

Tolerance: vLLM's CPU kernels (fused RMSNorm, its attention) and transformers' float32 ops agree to ~1e-7 on this
model (states of magnitude ~1); the tests allow ATOL = 1e-4 absolute.
"""

import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[vllm]'; see the README)")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

import torch  # noqa: E402

from hsrl.llm import ExtractionSpec, make_extractor  # noqa: E402
from hsrl.llm.models import load_model  # noqa: E402
from hsrl.llm.transformers_backend import TransformersExtractor  # noqa: E402
from hsrl.llm.vllm_backend import VLLMExtractor, read_hidden_states  # noqa: E402
from llm_helpers import OBS  # noqa: E402
from tiny_qwen import build_tiny_qwen  # noqa: E402

ATOL = 1e-4
LAYERS = (0, 1, 3, -1)  # of 4 blocks: embeddings, block 1, the last block before the final norm, after it


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(build_tiny_qwen(tmp_path_factory.mktemp("qwen"), num_layers=4))  # head_dim 32: vLLM CPU needs >= 32


@pytest.fixture(scope="module")
def hf(tiny):
    return load_model(tiny)


@pytest.fixture(scope="module")
def vllm_prompt(tiny):
    """Prompt-only 'mean' extractor; its engine extracts the layers of LAYERS and is shared below."""
    ex = VLLMExtractor(ExtractionSpec(model=tiny, layer=LAYERS, backend="vllm"), batch_size=3)
    yield ex
    ex.close()


@pytest.fixture(scope="module")
def vllm_generate(tiny, vllm_prompt):
    """Generation extractor (6 tokens, temperature 1) on the shared extraction engine plus a generation engine."""
    spec = ExtractionSpec(model=tiny, layer=LAYERS, backend="vllm", tokens=6, temperature=1.0, top_p=0.95)
    ex = VLLMExtractor(spec, engine=vllm_prompt.engine)
    yield ex
    ex.generation_engine.close()


def like(ex: VLLMExtractor, **changes) -> VLLMExtractor:
    """Another extractor on the same engines."""
    return VLLMExtractor(ex.spec.replace(**changes), engine=ex.engine, generation_engine=ex.generation_engine)


def transformers_for(hf, ex: VLLMExtractor) -> TransformersExtractor:
    return TransformersExtractor(ex.spec.replace(backend="transformers"), model=hf)


def assert_states_close(a, b, layers=LAYERS):
    for layer in layers:
        np.testing.assert_allclose(a.hidden[layer], b.hidden[layer], atol=ATOL, rtol=0, err_msg=f"layer {layer}")


def test_both_backends_feed_the_same_token_ids(hf, vllm_prompt):
    tx = transformers_for(hf, vllm_prompt)
    rows, ranges = vllm_prompt.encode(OBS)
    want_rows, want_ranges = tx.encode(OBS)
    assert rows == want_rows and (ranges == want_ranges).all()
    assert vllm_prompt.spec == tx.spec.replace(backend="vllm")  # same resolved template, version and dtype


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_prompt_only_equals_transformers_at_every_layer(hf, vllm_prompt, pooling):
    ex = like(vllm_prompt, pooling=pooling)
    got = ex.extract(OBS, return_token_states=True)
    want = transformers_for(hf, ex).extract(OBS, return_token_states=True)
    assert_states_close(got, want)
    assert (got.num_tokens == want.num_tokens).all() and (got.prompt_tokens == want.prompt_tokens).all()
    for layer in LAYERS:
        np.testing.assert_allclose(got.token_states[layer].astype(np.float32),
                                   want.token_states[layer].astype(np.float32), atol=1e-2)
    assert got.generated_text == [""] * len(OBS) and not got.finished.any()
    # the last layer is the normalised one, not the last block's raw output (vLLM's id 4)
    assert np.abs(got.hidden[-1] - got.hidden[3]).max() > 100 * ATOL


def test_layers_are_hf_hidden_states_indices(hf, vllm_prompt):
    """vLLM id k = residual after k blocks = HF hidden_states[k] (k < L); HF's L = vLLM's L + the model's final norm."""
    ex = like(vllm_prompt, pooling="last")
    rows, _ = ex.encode(OBS[:1])
    with torch.no_grad():
        hs = hf.model.model(torch.tensor(rows[:1]), output_hidden_states=True).hidden_states
    assert len(hs) == 5
    got = ex.extract(OBS[:1], layers=(0, 1, 3, 4))
    for layer in (0, 1, 3, 4):
        np.testing.assert_allclose(got.hidden[layer][0], hs[layer][0, -1].numpy(), atol=ATOL)


def test_batches_and_single_samples_agree(vllm_prompt):
    batched = vllm_prompt.extract(OBS)  # batch_size 3: two engine calls
    for b, obs in enumerate(OBS):
        alone = vllm_prompt.extract([obs])
        for layer in LAYERS:
            np.testing.assert_allclose(alone.hidden[layer][0], batched.hidden[layer][b], atol=ATOL)


def test_reextract_of_given_ids_equals_transformers(hf, vllm_prompt):
    tx = TransformersExtractor(vllm_prompt.spec.replace(backend="transformers", tokens=6, temperature=1.0), model=hf)
    generated = tx.extract(OBS)
    for pooling in ("mean", "last"):
        ex = like(vllm_prompt, pooling=pooling)
        got = ex.reextract(OBS, generated_ids=generated.generated_ids)
        want = TransformersExtractor(tx.spec.replace(pooling=pooling), model=hf).reextract(
            OBS, generated_ids=generated.generated_ids)
        assert_states_close(got, want)
        assert got.generated_text == want.generated_text and (got.num_tokens == want.num_tokens).all()


def test_generation_pools_the_generated_tokens_own_states(hf, vllm_generate):
    got = vllm_generate.extract(OBS, return_token_states=True)
    assert all(len(g) == 6 for g in got.generated_ids) and (got.num_tokens == 6).all() and not got.finished.any()
    assert len({tuple(g) for g in got.generated_ids}) == len(OBS)
    assert all(len(set(g)) > 1 for g in got.generated_ids)  # sampled, not one token repeated
    # the states are those of a prefill over prompt + generated ids, as the transformers backend computes them
    want = transformers_for(hf, vllm_generate).reextract(OBS, generated_ids=got.generated_ids, return_token_states=True)
    assert_states_close(got, want)
    assert got.generated_text == want.generated_text
    np.testing.assert_allclose(got.token_states[-1].astype(np.float32), want.token_states[-1].astype(np.float32),
                               atol=1e-2)


def test_generation_is_seeded_per_sample(vllm_generate):
    batch = vllm_generate.extract(OBS)
    assert vllm_generate.extract(OBS).generated_ids == batch.generated_ids
    for b, obs in enumerate(OBS):  # the same observation draws the same tokens whatever its batch
        assert vllm_generate.extract([obs]).generated_ids[0] == batch.generated_ids[b]
    seeded = vllm_generate.extract(OBS, seeds=[1, 2, 3, 4])
    assert seeded.generated_ids != batch.generated_ids
    assert vllm_generate.extract(OBS, seeds=[1, 2, 3, 4]).generated_ids == seeded.generated_ids


def test_greedy_generation_equals_transformers(hf, vllm_generate):
    ex = like(vllm_generate, temperature=0.0)
    got = ex.extract(OBS)
    want = transformers_for(hf, ex).extract(OBS)
    assert got.generated_ids == want.generated_ids
    assert_states_close(got, want)


def test_stops_at_end_of_sequence_and_pools_it(tiny, vllm_generate):
    """Declare a token the free generation produces an end-of-sequence id: generation stops there, pooled with it."""
    free = vllm_generate.extract(OBS)
    counts = {}
    for g in free.generated_ids:
        for t in g[:-1]:
            counts[t] = counts.get(t, 0) + 1
    stop = max(counts, key=counts.get)
    ex = like(vllm_generate)
    ex._eos_ids = sorted(set(ex._eos_ids) | {stop})
    got = ex.extract(OBS)
    assert got.finished.any()
    for b, g in enumerate(free.generated_ids):
        cut = next((k + 1 for k, t in enumerate(g) if t == stop), len(g))
        assert got.generated_ids[b] == g[:cut] and got.num_tokens[b] == cut
        assert got.finished[b] == (g[cut - 1] == stop)
    again = like(vllm_generate).reextract(OBS, generated_ids=got.generated_ids)
    assert_states_close(got, again)


def test_files_are_removed_and_the_folder_is_private(vllm_prompt, vllm_generate):
    vllm_prompt.extract(OBS)
    vllm_generate.extract(OBS[:2])
    folder = Path(vllm_prompt.engine.storage)
    assert folder.is_dir() and list(folder.iterdir()) == []  # every file and lock file was read and removed
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700  # tempfile.mkdtemp: this user only
    assert folder.name.startswith(f"hsrl-vllm-{os.getpid()}-")
    assert vllm_generate.generation_engine.storage is None  # the sampling engine writes no files


def test_folders_of_killed_processes_are_removed(tmp_path):
    from hsrl.llm.vllm_backend import FOLDER_PREFIX, remove_stale_folders

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = tmp_path / f"{FOLDER_PREFIX}{gone.pid}-abc"
    alive = tmp_path / f"{FOLDER_PREFIX}{os.getpid()}-abc"
    for folder in (dead, alive):
        folder.mkdir()
        (folder / "0-x.safetensors.lock").write_text("")
    assert remove_stale_folders(tmp_path) == [dead]
    assert not dead.exists() and alive.exists()


def test_connector_files_are_checked(tmp_path):
    """A missing, unreadable, foreign, misshapen or non-finite file is an error naming the request; it is removed."""
    from safetensors.torch import save_file

    def write(name, states, ids):
        path = tmp_path / f"{name}.safetensors"
        save_file({"hidden_states": states, "token_ids": torch.tensor(ids)}, str(path))
        (tmp_path / f"{name}.safetensors.lock").write_text("")
        return path

    good = write("good", torch.ones(3, 2, 8), [5, 6, 7])
    assert read_hidden_states(good, "good", [5, 6, 7], 2, 8).shape == (3, 2, 8)
    cases = {
        "missing": (tmp_path / "missing.safetensors", "missing"),
        "broken": (tmp_path / "broken.safetensors", "cannot read"),
        "other": (write("other", torch.ones(3, 2, 8), [5, 6, 9]), "other tokens"),
        "shape": (write("shape", torch.ones(3, 1, 8), [5, 6, 7]), "shape"),
        "nan": (write("nan", torch.full((3, 2, 8), float("nan")), [5, 6, 7]), "non-finite"),
    }
    (tmp_path / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    for request, (path, message) in cases.items():
        with pytest.raises(RuntimeError, match=f"request {request}: .*{message}"):
            read_hidden_states(path, request, [5, 6, 7], 2, 8)
    assert list(tmp_path.iterdir()) == []  # files and lock files removed, good or bad


def test_refusals(tiny, vllm_prompt):
    with pytest.raises(ValueError, match="layers \\[2\\]: this vLLM engine extracts layers \\[0, 1, 3, 4\\]"):
        vllm_prompt.extract(OBS[:1], layers=(1, -3))  # -3 is layer 2
    with pytest.raises(ValueError, match="reads text only"):
        VLLMExtractor(ExtractionSpec(model=tiny, backend="vllm", input="image"))
    with pytest.raises(ValueError, match="not a causal LM"):
        make_extractor(ExtractionSpec(model="minilm", backend="vllm"))
    with pytest.raises(ValueError, match="reads text only"):
        vllm_prompt.extract(OBS[:1], images=np.zeros((1, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="the engine given extracts layers"):
        VLLMExtractor(ExtractionSpec(model=tiny, backend="vllm", layer=2), engine=vllm_prompt.engine)


@pytest.fixture(scope="module")
def chunk_dir(tmp_path_factory):
    """One Classic chunk (3 steps x 2 envs) whose text observations are OBS."""
    from data_helpers import make_arrays, make_meta

    from hsrl.data import chunk_path, write_chunk

    folder = tmp_path_factory.mktemp("raw")
    arrays = make_arrays(np.random.default_rng(0), 3, 2)
    arrays["text_obs"] = np.array(OBS + OBS[:2])
    write_chunk(chunk_path(folder, 0), arrays, make_meta(2))
    return folder


def run_cli(*args, timeout=600):
    cmd = [sys.executable, "-m", "hsrl.cli", *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_hsrl_label_backend_vllm(tiny, vllm_prompt, chunk_dir, tmp_path):
    from hsrl.data import list_chunks, read_chunk

    out = tmp_path / "labelled"
    run_cli("label", chunk_dir, out, "--model", tiny, "--backend", "vllm", "--layer", 1, "--batch-size", 4,
            "--no-progress")
    chunk = read_chunk(list_chunks(out)[0])
    spec = ExtractionSpec.from_json(chunk.meta.spec_json)
    assert spec.backend == "vllm" and spec.layer == 1 and spec == like(vllm_prompt, layer=1).spec
    want = like(vllm_prompt, layer=1).extract(list(chunk["text_obs"])).hidden_state
    np.testing.assert_allclose(chunk["hidden_state"], want, atol=ATOL)


def test_hsrl_serve_backend_vllm(tiny, vllm_prompt):
    from hsrl.serve.client import HiddenStateClient

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "hsrl.cli", "serve", "--env", "Craftax-Classic-Symbolic-v1", "--model", tiny,
           "--backend", "vllm", "--port", str(port), "--log-level", "warning"]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        with HiddenStateClient(f"http://127.0.0.1:{port}") as client:
            deadline = time.monotonic() + 300
            while True:
                assert server.poll() is None, f"hsrl serve exited: {server.stderr.read()[-3000:]}"
                try:
                    health = client.wait_ready(timeout=5)
                    break
                except Exception:
                    assert time.monotonic() < deadline, "hsrl serve --backend vllm did not get ready"
            assert health["spec"]["backend"] == "vllm"
            got = client.hidden_states(texts=OBS)
        want = like(vllm_prompt, layer=-1).extract(OBS).hidden_state
        np.testing.assert_allclose(got, want, atol=ATOL)
    finally:
        server.terminate()
        server.wait(30)


def test_hsrl_label_ray_backend_vllm(tiny, vllm_prompt, chunk_dir, tmp_path):
    """On CPUs `--ray --backend vllm` starts one engine (one worker); with GPUs one per GPU (--gpus-per-worker 1)."""
    from hsrl.data import list_chunks, read_chunk
    from hsrl.data.label import LabelConfig, label_dataset

    out = tmp_path / "ray"
    run_cli("label", chunk_dir, out, "--model", tiny, "--backend", "vllm", "--ray", "--no-progress")
    assert len(list((out / ".workers").iterdir())) == 1
    chunk = read_chunk(list_chunks(out)[0])
    want = like(vllm_prompt, layer=-1).extract(list(chunk["text_obs"])).hidden_state
    np.testing.assert_allclose(chunk["hidden_state"], want, atol=ATOL)
    with pytest.raises(ValueError, match="one engine per GPU"):
        label_dataset(LabelConfig(str(chunk_dir), str(tmp_path / "half"), model=tiny, backend="vllm", ray="local",
                                  gpus_per_worker=0.5, progress=False))


def test_online_ppo_acts_on_vllm_states_of_each_observation(vllm_prompt):
    """Online PPO's host callback with the vLLM backend: right after a refresh and on an episode's first step the
    policy sees vLLM's state of that very observation (the same check as tests/test_online.py)."""
    from online_helpers import check_refresh

    check_refresh(like(vllm_prompt, layer=-1, variant="classic"))


def test_hsrl_online_backend_vllm(tiny, vllm_prompt, tmp_path):
    from hsrl.llm import ExtractionSpec
    from hsrl.rl.checkpoint import load_policy
    from hsrl.rl.metrics import read_metrics

    out = tmp_path / "online"
    run_cli("online", "--env", "Craftax-Classic-Symbolic-v1", "--model", tiny, "--backend", "vllm", "--envs", 4,
            "--steps", 64, "--num-steps", 16, "--skip-n", 8, "--num-minibatches", 2, "--width", 32, "--out", out,
            "--no-progress")
    policy = load_policy(out)
    assert policy.uses_hidden and policy.network.hidden_size == vllm_prompt.hidden_size
    assert ExtractionSpec.from_json(policy.spec_json).backend == "vllm"
    assert read_metrics(out)[-1]["llm/calls"] >= 2


def test_engine_length_limit(tiny, monkeypatch):
    """An engine holds $HSRL_VLLM_MAX_MODEL_LEN tokens; a longer prompt is refused before it reaches vLLM."""
    monkeypatch.setenv("HSRL_VLLM_MAX_MODEL_LEN", "256")
    ex = VLLMExtractor(ExtractionSpec(model=tiny, backend="vllm", template="short"))
    try:
        assert ex.engine.max_model_len == ex.context_length == 256
        short, long = OBS[3], OBS[2]
        assert len(ex.encode([short])[0][0]) < 256 < len(ex.encode([long])[0][0])
        assert ex.extract([short]).hidden_state.shape == (1, ex.hidden_size)
        with pytest.raises(ValueError, match="more than the context"):
            ex.extract([short, long])
    finally:
        ex.close()
    assert not Path(ex.engine.storage).exists()  # closing removes the engine's folder
