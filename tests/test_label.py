import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hsrl.data import list_chunks, load_dataset, read_chunk
from hsrl.data.collect import CollectConfig, collect
from hsrl.data.label import ExtractConfig, LabelConfig, extract_dataset, label_dataset, run_label

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Three small Classic chunks (2 envs x 8 steps) collected by random play."""
    out = tmp_path_factory.mktemp("raw")
    collect(CollectConfig(env="Craftax-Classic-Symbolic-v1", envs=2, steps=48, chunk_steps=8, out=str(out),
                          seed=3, progress=False))
    return out


@pytest.fixture(scope="module")
def labelled(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("labelled")
    summary = label_dataset(LabelConfig(str(dataset), str(out), batch_size=5, progress=False))
    assert summary.failed == {} and len(summary.labelled) == 3
    return out


def test_label_keeps_keys_and_adds_states_with_spec(dataset, labelled):
    from hsrl.llm import ExtractionSpec, make_extractor

    src, dst = read_chunk(list_chunks(dataset)[1]), read_chunk(list_chunks(labelled)[1])
    for key in src.arrays:
        np.testing.assert_array_equal(src[key], dst[key], err_msg=key)
    spec = ExtractionSpec.from_json(dst.meta.spec_json)
    assert spec.model == "minilm" and spec.tokens == 1 and spec.variant == "classic"
    assert dst["hidden_state"].shape == (16, 384) and dst["hidden_state"].dtype == np.float32
    assert dst["text_generated"].shape == (16,)
    # same function, same vector: labelling equals calling the extractor directly
    direct = make_extractor(spec).extract(list(dst["text_obs"][:4])).hidden_state
    np.testing.assert_allclose(dst["hidden_state"][:4], direct, rtol=1e-4, atol=1e-5)


def test_token_states_are_streamed_and_pool_to_the_mean(dataset, labelled, tmp_path):
    out = tmp_path / "tok"
    label_dataset(LabelConfig(str(dataset), str(out), batch_size=6, save_token_states=True, progress=False))
    c = read_chunk(list_chunks(out)[0])
    states, counts = c["hidden_state"], c["hidden_tokens"]
    assert states.ndim == 3 and states.dtype == np.float16 and counts.max() == states.shape[1]
    assert np.all(states[np.arange(states.shape[1])[None, :] >= counts[:, None]] == 0), "padding is zero"
    pooled = states.astype(np.float32).sum(1) / counts[:, None]
    reference = read_chunk(list_chunks(labelled)[0])["hidden_state"]
    np.testing.assert_allclose(pooled, reference, atol=2e-3)
    # readers (train-awr, stats, probe, experiment) see each row's pooled tokens: the pooled labelling, up to the
    # float16 the token states are stored in
    read = load_dataset(out, ["hidden_state"], show_progress=False)["hidden_state"]
    np.testing.assert_allclose(read[: len(counts)], pooled, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(read, load_dataset(labelled, ["hidden_state"], show_progress=False)["hidden_state"],
                               atol=2e-3)


def test_bad_input_file_is_reported_and_others_labelled(dataset, tmp_path):
    bad_in = tmp_path / "in"
    bad_in.mkdir()
    files = list_chunks(dataset)
    for f in files:
        (bad_in / f.name).write_bytes(f.read_bytes())
    broken = bad_in / files[1].name
    broken.write_bytes(broken.read_bytes()[:500])  # truncated
    out = tmp_path / "out"
    code = run_label(LabelConfig(str(bad_in), str(out), batch_size=8, progress=False))
    assert code == 1
    assert sorted(p.name for p in out.glob("chunk_*.npz")) == [files[0].name, files[2].name]
    summary = label_dataset(LabelConfig(str(bad_in), str(out), batch_size=8, progress=False))
    assert list(summary.failed) == [files[1].name] and "corrupt or truncated" in summary.failed[files[1].name]
    assert len(summary.skipped) == 2  # finished outputs are skipped on a rerun


def _progress(out):
    """Saved batches plus finished files: grows as the labeller works."""
    return len(list(out.glob(".partial/*/batch_*.npz"))) + 100 * len(list(out.glob("chunk_*.npz")))


def test_killed_labeller_resumes_to_identical_outputs(dataset, labelled, tmp_path):
    """Kill a real `hsrl label` process at random moments while it works, rerun, and compare with an
    uninterrupted run."""
    # Four copies of the three chunks: enough batches (48 of 2 rows) that three short runs cannot finish
    # them all, however fast the machine is.
    sources = list_chunks(dataset)
    work = tmp_path / "in"
    work.mkdir()
    for i in range(4 * len(sources)):
        (work / f"chunk_{i:06d}.npz").write_bytes(sources[i % len(sources)].read_bytes())
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "hsrl.cli", "label", str(work), str(out), "--batch-size", "2", "--no-progress"]
    rng = random.Random(0)
    kills = 0
    for _ in range(3):
        before = _progress(out) if out.exists() else 0
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline and (not out.exists() or _progress(out) <= before):
            time.sleep(0.02)  # wait until this run has saved something
        time.sleep(rng.uniform(0.0, 0.3))  # then kill at a random moment
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills == 3, "every run should really be interrupted"
    assert len(list(out.glob("chunk_*.npz"))) < 12, "some work was left for the final run"
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert not list(out.glob("**/*.tmp")), "no temporary file is left behind"
    assert not (out / ".partial").exists(), "an empty .partial/ is removed after a successful run"
    references = list_chunks(labelled)
    outputs = list_chunks(out)
    assert len(outputs) == 12
    for i, a in enumerate(outputs):
        ca, cb = read_chunk(a), read_chunk(references[i % len(references)])
        assert ca.meta == cb.meta
        np.testing.assert_array_equal(ca["text_obs"], cb["text_obs"])
        # batch size 2 here, 5 in the reference: the same function on other batches, float tolerance
        np.testing.assert_allclose(ca["hidden_state"], cb["hidden_state"], rtol=1e-5, atol=1e-6)


def test_saved_batches_of_a_finished_file_are_removed_on_rerun(dataset, tmp_path):
    """A run killed after writing a file but before removing its saved batches leaves them behind; the rerun
    skips the file (it is done) and removes them, and `.partial/` with them once no unfinished file needs it."""
    out = tmp_path / "out"
    label_dataset(LabelConfig(str(dataset), str(out), batch_size=8, progress=False))
    done, unfinished = list_chunks(out)[0], list_chunks(out)[2]
    for f in (done, unfinished):
        (out / ".partial" / f.stem).mkdir(parents=True, exist_ok=True)
        (out / ".partial" / f.stem / "batch_000000.npz").write_bytes(b"left by a killed run")
    unfinished.unlink()  # this one the killed run never finished
    summary = label_dataset(LabelConfig(str(dataset), str(out), batch_size=8, progress=False))
    assert summary.skipped == [done.name, list_chunks(out)[1].name] and summary.labelled == [unfinished.name]
    assert not (out / ".partial").exists()
    # a rerun with nothing left to label cleans up too
    (out / ".partial" / done.stem).mkdir(parents=True)
    assert label_dataset(LabelConfig(str(dataset), str(out), batch_size=8, progress=False)).labelled == []
    assert not (out / ".partial").exists()


def test_extract_other_layer_of_prompt_only_data(labelled, tmp_path):
    from hsrl.llm import ExtractionSpec

    out = tmp_path / "layer2"
    summary = extract_dataset(ExtractConfig(str(labelled), str(out), layer=2, batch_size=8, progress=False))
    assert not summary.failed
    c = read_chunk(list_chunks(out)[0])
    assert ExtractionSpec.from_json(c.meta.spec_json).layer == 2
    assert not np.allclose(c["hidden_state"], read_chunk(list_chunks(labelled)[0])["hidden_state"])


def _assert_extract_recomputes(gen: Path, again: Path) -> None:
    """`hsrl extract` of generation-mode labels at the same layer gives the same text and states."""
    summary = extract_dataset(ExtractConfig(str(gen), str(again), layer=-1, batch_size=8, progress=False))
    assert not summary.failed
    a, b = read_chunk(list_chunks(gen)[0]), read_chunk(list_chunks(again)[0])
    assert (a["text_generated"] != "").all()
    np.testing.assert_array_equal(a["text_generated"], b["text_generated"])
    np.testing.assert_allclose(a["hidden_state"], b["hidden_state"], rtol=1e-4, atol=1e-4)


def test_reextract_generated_text_matches_generation(dataset, tmp_path):
    """Generation-mode labels on a tiny Qwen3; `hsrl extract` at the same layer recomputes the same states."""
    from tiny_qwen import build_tiny_qwen

    model = build_tiny_qwen(tmp_path / "qwen", char_level=True, max_position_embeddings=16384)
    gen = tmp_path / "gen"
    label_dataset(LabelConfig(str(dataset), str(gen), model=str(model), tokens=6, batch_size=8, progress=False))
    _assert_extract_recomputes(gen, tmp_path / "again")


def test_label_pixel_data_with_a_vision_language_model(classic_pixel_dataset, tiny_vlm_path, dataset, tmp_path):
    """`--input image` reads the chunk's uint8 frames: the stored states equal the extractor's on the same frames
    (as uint8 or as the env's float pixels); `image+text` through the CLI; symbolic data is refused by name."""
    from hsrl.cli import main
    from hsrl.data import uint8_to_pixels
    from hsrl.llm import ExtractionSpec, make_extractor

    out = tmp_path / "image"
    summary = label_dataset(LabelConfig(str(classic_pixel_dataset), str(out), model=str(tiny_vlm_path),
                                        input="image", batch_size=5, progress=False))
    assert not summary.failed and len(summary.labelled) == 2
    src, dst = read_chunk(list_chunks(classic_pixel_dataset)[1]), read_chunk(list_chunks(out)[1])
    assert src["obs"].dtype == np.uint8 and src["obs"].shape == (16, 63, 63, 3)
    for key in src.arrays:
        np.testing.assert_array_equal(src[key], dst[key], err_msg=key)
    spec = ExtractionSpec.from_json(dst.meta.spec_json)
    assert spec.input == "image" and spec.model == str(tiny_vlm_path) and spec.variant == "classic"
    assert dst["hidden_state"].shape == (16, 64) and dst["hidden_state"].dtype == np.float32
    ex = make_extractor(spec, batch_size=3)
    np.testing.assert_allclose(dst["hidden_state"][:6], ex.extract(None, images=src["obs"][:6]).hidden_state,
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(ex.extract(None, images=uint8_to_pixels(src["obs"][:3])).hidden_state,
                                  ex.extract(None, images=src["obs"][:3]).hidden_state)

    both = tmp_path / "both"
    assert main(["label", str(classic_pixel_dataset), str(both), "--model", str(tiny_vlm_path), "--input",
                 "image+text", "--batch-size", "8", "--no-progress"]) == 0
    c = read_chunk(list_chunks(both)[0])
    assert ExtractionSpec.from_json(c.meta.spec_json).input == "image+text"
    src0 = read_chunk(list_chunks(classic_pixel_dataset)[0])
    spec = ExtractionSpec.from_json(c.meta.spec_json)
    direct = make_extractor(spec).extract(list(src0["text_obs"][:4]), images=src0["obs"][:4]).hidden_state
    np.testing.assert_allclose(c["hidden_state"][:4], direct, rtol=1e-4, atol=1e-5)

    summary = label_dataset(LabelConfig(str(dataset), str(tmp_path / "symbolic"), model=str(tiny_vlm_path),
                                        input="image", progress=False))
    assert len(summary.failed) == 3
    name, why = next(iter(summary.failed.items()))
    assert name in why and "obs" in why and "Pixels env" in why


def test_reextract_generated_text_of_pixel_data_matches_generation(classic_pixel_dataset, tmp_path):
    """Generation-mode labels from a tiny Qwen3-VL reading the frames; `hsrl extract` recomputes the same states from
    the frames and the generated text."""
    from tiny_vlm import build_tiny_vlm

    model = build_tiny_vlm(tmp_path / "vlm", char_level=True)
    gen = tmp_path / "gen"
    assert not label_dataset(LabelConfig(str(classic_pixel_dataset), str(gen), model=str(model), input="image",
                                         tokens=5, temperature=1.0, batch_size=8, progress=False)).failed
    _assert_extract_recomputes(gen, tmp_path / "again")


class _Stop(Exception):
    pass


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong_rows", "marker"])
def test_a_corrupt_saved_batch_is_recomputed_with_a_warning(dataset, labelled, tmp_path, damage):
    """A labeller stopped after two saved batches; one of them (or the progress marker) is then damaged. The rerun
    names the broken file, recomputes it and writes what an uninterrupted run writes."""
    src = list_chunks(dataset)[0]
    out = tmp_path / "out"
    out.mkdir()
    config = LabelConfig(str(dataset), str(out), batch_size=5, progress=False)
    _stop_after_two_batches(config, src, out)
    partial = out / ".partial" / src.stem
    broken = partial / ("progress.json" if damage == "marker" else "batch_000001.npz")
    if damage == "truncate":
        broken.write_bytes(broken.read_bytes()[:100])
    elif damage == "garbage":
        broken.write_bytes(b"not a zip file at all" * 10)
    elif damage == "wrong_rows":
        with np.load(broken) as z:
            arrays = {k: z[k][:2] for k in z.files}
        np.savez(broken, **arrays)
    else:
        broken.write_text("{not json")
    if damage == "marker":
        summary = label_dataset(config)
    else:
        with pytest.warns(UserWarning, match=f"{broken.name}: saved batch is corrupt"):
            summary = label_dataset(config)
    assert not summary.failed and len(summary.labelled) == 3
    assert not (out / ".partial").exists()
    for a, b in zip(list_chunks(out), list_chunks(labelled)):
        np.testing.assert_array_equal(read_chunk(a)["hidden_state"], read_chunk(b)["hidden_state"])


def _stop_after_two_batches(config: LabelConfig, src: Path, out: Path) -> None:
    """Label `src` into `out` as `config` says, stopped (as if killed) after its second saved batch."""
    from hsrl.data.label import Labeller
    from hsrl.llm import make_extractor

    labeller = Labeller(make_extractor(config.extraction_spec("classic")), config.batch_size, False)
    seen = []

    def stop_after_two(n):
        seen.append(n)
        if len(seen) == 2:
            raise _Stop

    with pytest.raises(_Stop):
        labeller.label_file(src, out / src.name, on_batch=stop_after_two)


def _pad_to(path: Path, size: int) -> None:
    """Make a chunk file `size` bytes long with a zip comment (numpy and hsrl's readers ignore it)."""
    import zipfile

    extra = size - path.stat().st_size
    assert 0 <= extra < 65536
    with zipfile.ZipFile(path, "a") as z:
        z.comment = b"x" * extra
    assert path.stat().st_size == size


def test_an_input_replaced_by_another_of_the_same_size_is_labelled_afresh(dataset, labelled, tmp_path):
    """Saved batches name their input by its bytes' hash, not its size: a chunk replaced between runs by another
    chunk of exactly the same byte size gets none of the old chunk's batches."""
    import shutil

    chunks = list_chunks(dataset)
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    out.mkdir()
    first, second = raw / chunks[0].name, tmp_path / "replacement.npz"
    shutil.copy(chunks[0], first)
    shutil.copy(chunks[1], second)  # the same rows and keys, other observations
    size = max(first.stat().st_size, second.stat().st_size)
    _pad_to(first, size)
    _pad_to(second, size)
    config = LabelConfig(str(raw), str(out), batch_size=5, progress=False)
    _stop_after_two_batches(config, first, out)
    assert len(list(out.glob(".partial/*/batch_*.npz"))) == 2
    second.replace(first)
    summary = label_dataset(config)
    assert not summary.failed and summary.labelled == [first.name]
    got = read_chunk(out / first.name)
    fresh = read_chunk(list_chunks(labelled)[1])  # chunks[1] labelled in one run
    np.testing.assert_array_equal(got["obs"], fresh["obs"])
    np.testing.assert_array_equal(got["hidden_state"], fresh["hidden_state"])


def test_relabelling_into_a_folder_of_other_settings_is_refused_before_any_work(dataset, labelled, tmp_path, capsys):
    """A finished file counts as done only when its spec is the one asked for: other settings are refused naming
    the fields and --overwrite, and nothing is written; the same settings (with 'auto' fields the backend resolved)
    skip, printing one line instead of empty progress bars."""
    import shutil

    from hsrl.errors import InputError

    out = tmp_path / "out"
    shutil.copytree(labelled, out)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(InputError, match=r"fields that differ: layer, pooling.*--overwrite"):
        label_dataset(LabelConfig(str(dataset), str(out), layer=2, pooling="last", progress=False))
    with pytest.raises(InputError, match=r"save_token_states"):
        label_dataset(LabelConfig(str(dataset), str(out), save_token_states=True, progress=False))
    with pytest.raises(InputError, match=r"fields that differ: pooling"):
        extract_dataset(ExtractConfig(str(labelled), str(out), pooling="last", progress=False))
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before, "a refused run wrote nothing"

    capsys.readouterr()
    assert run_label(LabelConfig(str(dataset), str(out), progress=True)) == 0  # template/dtype 'auto': resolved
    captured = capsys.readouterr()
    assert captured.out == "all 3 files are already done with these settings; nothing to do\n"
    assert "sample" not in captured.err, "no empty progress bars"

    summary = label_dataset(LabelConfig(str(dataset), str(out), layer=2, pooling="last", overwrite=True,
                                        batch_size=8, progress=False))
    assert len(summary.labelled) == 3
    from hsrl.llm import ExtractionSpec

    spec = ExtractionSpec.from_json(read_chunk(list_chunks(out)[0]).meta.spec_json)
    assert (spec.layer, spec.pooling) == (2, "last")
