"""Issue 29: values checked where data enters, no stored secrets, no silent overwrite.

Each refusal is checked as a user meets it: `hsrl VERB` exits 2 with one line naming the file, the field and
the first bad row, and writes nothing."""

import dataclasses
import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from rl_helpers import write_hidden_task  # noqa: E402

from hsrl.cli import main  # noqa: E402
from hsrl.data import add_returns, chunk_path, inspect_chunk, list_chunks, read_chunk, update_chunk, write_chunk  # noqa: E402

ENV = "Craftax-Classic-Symbolic-v1"
TOKEN = "s3cr3t-t0ken-do-not-store"


def _write_raw(path: Path, key: str, value: np.ndarray) -> None:
    """Replace one array of a chunk by `value` as stored bytes, past write_chunk's validation (a file written by
    another tool)."""
    chunk = read_chunk(path)
    arrays = {k: (np.asarray(v.tolist(), dtype=str) if v.dtype == object else v) for k, v in chunk.arrays.items()}
    arrays[key] = value
    with open(path, "wb") as f:
        np.savez_compressed(f, allow_pickle=False, meta=np.array(chunk.meta.to_json()), **arrays)


def _poison(path: Path, key: str, row: int, value) -> None:
    arr = read_chunk(path, [key])[key].copy()
    if key == "action" and isinstance(value, float):
        _write_raw(path, key, np.where(np.arange(len(arr)) == row, value, arr).astype(np.float64))
        return
    if arr.ndim == 1:
        arr[row] = value
    else:
        arr[row].reshape(-1)[3] = value
    update_chunk(path, {key: arr})


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


BAD = [("action", 999, True), ("action", -1, True), ("action", 2.5, False), ("hidden_state", np.nan, True),
       ("hidden_state", np.inf, True), ("return_to_go", np.nan, True), ("return_to_go", -np.inf, True),
       ("obs", np.nan, True)]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return write_hidden_task(tmp_path_factory.mktemp("task") / "data", np.random.default_rng(0), files=2,
                             rows_per_file=64)


@pytest.mark.parametrize("key,value,names_row", BAD, ids=[f"{k}={v}" for k, v, _ in BAD])
def test_train_awr_refuses_bad_values_before_writing_anything(task, tmp_path, capsys, key, value, names_row):
    data = tmp_path / "data"
    shutil.copytree(task, data)
    bad = list_chunks(data)[1]
    _poison(bad, key, 13, value)
    out = tmp_path / "run"
    assert main(["train-awr", str(data), "--out", str(out), "--steps", "4", "--batch-size", "8", "--width", "8",
                 "--no-progress"]) == 2
    line = _one_line(capsys)
    assert str(bad) in line and f": {key}: " in line, line
    if names_row:
        assert "row 13 " in line, line
    assert not out.exists(), "nothing written: no run folder, no checkpoint"


def test_returns_refuses_a_reward_that_is_not_finite(raw, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(raw, data)
    bad = list_chunks(data)[2]
    _poison(bad, "reward", 7, np.inf)
    before = _hashes(data)
    assert main(["returns", str(data), "--no-progress"]) == 2
    assert f"{bad}: reward: row 7 holds inf" in _one_line(capsys)
    assert _hashes(data) == before


def test_reader_names_the_first_bad_row_in_any_block(tmp_path):
    """The check runs per block as data is read: a bad row past the first block is found and named."""
    from hsrl.data import ChunkMeta, DataFileError, load_dataset

    n = 40_000  # hidden_state (n, 16) float32: several 1 MiB blocks
    rng = np.random.default_rng(1)
    arrays = {"obs": np.zeros((n, 1345), np.float32)[:, :1345], "next_obs": np.zeros((n, 1345), np.float32),
              "action": rng.integers(0, 17, n), "reward": np.zeros(n, np.float32), "done": np.zeros(n, bool),
              "hidden_state": rng.standard_normal((n, 16)).astype(np.float32)}
    arrays["hidden_state"][n - 7, 5] = np.nan
    path = write_chunk(chunk_path(tmp_path, 0), arrays, ChunkMeta(env_name=ENV, num_envs=8, obs_kind="symbolic"))
    for load in (lambda: load_dataset(tmp_path, ["hidden_state"], hidden_dtype=np.float16, show_progress=False),
                 lambda: load_dataset(tmp_path, ["hidden_state"], show_progress=False),
                 lambda: read_chunk(path, ["hidden_state"])):
        with pytest.raises(DataFileError, match=rf"hidden_state: row {n - 7} holds nan"):
            load()


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    out = tmp_path_factory.mktemp("raw")
    assert main(["collect", "--env", ENV, "--envs", "2", "--steps", "64", "--chunk-steps", "8", "--seed", "3",
                 "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.mark.parametrize("key,value", [("obs", np.nan), ("obs", np.inf), ("next_obs", -np.inf), ("action", 17),
                                       ("action", -1)])
def test_label_refuses_bad_values_before_writing_any_output(raw, tmp_path, capsys, key, value):
    data = tmp_path / "in"
    shutil.copytree(raw, data)
    bad = list_chunks(data)[1]
    _poison(bad, key, 5, value)
    out = tmp_path / "out"
    assert main(["label", str(data), str(out), "--no-progress"]) == 2
    line = _one_line(capsys)
    assert str(bad) in line and f": {key}: row 5 " in line, line
    assert not out.exists(), "no output folder, no output file"


# ------------------------------------------------------------------------------------------------ no silent overwrite


def _hashes(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _collect_args(out, **kw):
    flags = {"env": ENV, "envs": "2", "steps": "64", "chunk-steps": "8", "seed": "3", **kw}
    return ["collect", *[a for k, v in flags.items() for a in (f"--{k}", v)], "--out", str(out), "--no-progress"]


@pytest.mark.parametrize("with_state", [False, True])
def test_collect_into_a_labelled_folder_is_refused_and_leaves_it_as_it_was(raw, tmp_path, capsys, with_state):
    """`hsrl collect --out` a folder of labelled chunks (same flags as the collection they came from): refused
    naming the folder and what it holds; every file byte-identical."""
    labelled = tmp_path / "labelled"
    shutil.copytree(raw, labelled)
    if not with_state:
        (labelled / "collect_state.npz").unlink()
    for path in list_chunks(labelled):  # as `hsrl label` writes them, plus `hsrl returns`
        n = inspect_chunk(path).num_rows
        update_chunk(path, {"hidden_state": np.ones((n, 4), np.float32)})
    add_returns(labelled, 0.99, show_progress=False)
    before = _hashes(labelled)
    assert main(_collect_args(labelled)) == 2
    line = _one_line(capsys)
    assert str(labelled) in line and "4 labelled chunk files (hidden_state, return_to_go, return_truncated)" in line
    assert "not written by this collection" in line
    assert _hashes(labelled) == before
    assert main(_collect_args(labelled, steps="128")) == 2  # more chunks: the same refusal, nothing appended
    assert _hashes(labelled) == before


def test_collect_into_a_folder_of_another_collection_is_refused(raw, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(raw, other)
    (other / "collect_state.npz").unlink()  # no state file to compare flags with: the chunks themselves tell
    before = _hashes(other)
    assert main(_collect_args(other, seed="4")) == 2
    assert "4 chunk files of another collection" in _one_line(capsys)
    assert _hashes(other) == before
    # the same settings: the chunks are this collection's own, written again identically
    assert main(_collect_args(other)) == 0
    assert {k: v for k, v in _hashes(other).items() if k.startswith("chunk_")} == \
        {k: v for k, v in before.items() if k.startswith("chunk_")}


# ------------------------------------------------------------------------------------------------ no stored secrets


def _files_holding(folder: Path, secret: str) -> list[str]:
    return [str(p) for p in Path(folder).rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_online_and_eval_never_store_the_token(tmp_path):
    from hsrl.rl.checkpoint import load_policy

    run, ev = tmp_path / "run", tmp_path / "eval"
    assert main(["online", "--env", ENV, "--no-hidden", "--envs", "2", "--steps", "32", "--num-steps", "8",
                 "--num-minibatches", "1", "--update-epochs", "1", "--width", "16", "--token", TOKEN, "--out", str(run),
                 "--no-progress"]) == 0
    assert main(["eval", str(run), "--episodes", "1", "--envs", "2", "--max-episode-steps", "8", "--token", TOKEN,
                 "--out", str(ev), "--no-progress"]) == 0
    assert _files_holding(tmp_path, TOKEN) == []
    # what was stored: that a token was given, not which
    assert json.loads((run / "run_config.json").read_text())["token"] == "<set>"
    assert load_policy(run).meta["train_config"]["token"] == "<set>"
    assert json.loads((ev / "eval.json").read_text())["config"]["token"] == "<set>"


def test_experiment_never_stores_the_token_and_a_rotated_token_reuses_finished_runs(tmp_path):
    from experiment_helpers import task_pair

    from hsrl.experiment.config import ExperimentConfig, run_experiment

    train, held = task_pair(tmp_path / "data", 0, rows_per_file=256, files=1)
    config = ExperimentConfig(offline=str(train), eval_data=str(held), out=str(tmp_path / "exp"), seeds=1,
                              control=False, awr_steps=8, awr_batch_size=16, awr_save_every=8, width=8,
                              bootstrap_reps=50, progress=False, token=TOKEN)
    run_experiment(config)
    assert _files_holding(tmp_path / "exp", TOKEN) == []
    again = run_experiment(dataclasses.replace(config, token="another-token"))
    assert again["config"]["runs_skipped"] == 2 and again["config"]["runs_done"] == 0
    assert again["config"]["token"] == "<set>"


def test_a_run_identity_leaves_the_token_out(tmp_path):
    """An online arm's run finished with one token is the same run with another (or none), also when its
    result.json was written before identities left secrets out (`"token": null` in it)."""
    from hsrl.experiment.runs import RESULT_FILE, Job, finished
    from hsrl.rl.ppo import OnlineConfig

    def job(token):
        return Job(arm="ppo-hidden", algo="ppo", hidden=True, seed=0, run_dir=str(tmp_path),
                   train=OnlineConfig(server="http://127.0.0.1:1", token=token, out=str(tmp_path / "train")), eval=None)

    assert TOKEN not in json.dumps(job(TOKEN).identity())
    (tmp_path / RESULT_FILE).write_text(json.dumps({"identity": job(TOKEN).identity(), "arm": "ppo-hidden"}))
    assert finished(job("rotated"))["arm"] == "ppo-hidden"
    assert finished(job(None))["arm"] == "ppo-hidden"
    old = job(None).identity()
    old["train"]["token"] = None  # as results written before this change hold it
    (tmp_path / RESULT_FILE).write_text(json.dumps({"identity": old, "arm": "ppo-hidden"}))
    assert finished(job(TOKEN))["arm"] == "ppo-hidden"
