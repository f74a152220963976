"""Long online runs: resume after SIGKILL equals an uninterrupted run (its saved trajectories included), SIGTERM saves
and exits 75, a resume with a changed flag is refused or (where the LLM runs) recorded, and the trajectories a run saves
while training are what its policy read, train AWR, stay stopped once stopped, and are never another run's."""

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import flax.serialization
import numpy as np
import pytest
from online_helpers import sigterm_after_first_checkpoint

from hsrl.errors import PREEMPTED_EXIT_CODE, InputError, Preempted
from hsrl.rl.ppo import OnlineConfig, train_online

ENV = "Craftax-Classic-Symbolic-v1"
# small and quick: 4 environments, episodes cut at 20 steps (resets and the reset pool are exercised), a checkpoint
# after every one of 8 updates
FLAGS = dict(env=ENV, envs=4, steps=256, num_steps=8, skip_n=4, num_minibatches=2, width=32, save_every=1,
             max_episode_steps=20)
TIME_KEYS = ("wall_time", "charts/SPS", "llm/cache_hit_rate")  # wall-clock figures, and a cache that starts afresh


def _cli(out: Path, *extra: str) -> list[str]:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in FLAGS.items()]
    return [sys.executable, "-m", "hsrl.cli", "online", *flags, f"--out={out}", "--no-progress", *extra]


def _final_state(out: Path) -> dict:
    final = sorted((out / "checkpoints").glob("step_*.msgpack"))[-1]
    return flax.serialization.msgpack_restore(final.read_bytes())


def _metrics(out: Path) -> list[dict]:
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k not in TIME_KEYS and not k.startswith("time/")} for line in lines]


def _checkpoints(out: Path) -> int:
    return max([int(p.stem.split("_")[1]) for p in (out / "checkpoints").glob("step_*.json")], default=0)


def _cut_back(out: Path, step: int) -> None:
    """The run folder as a kill right after its checkpoint at `step` leaves it: later checkpoints and the summary go
    (the resumed run drops the later metrics lines itself)."""
    assert (out / "checkpoints" / f"step_{step:09d}.json").exists()
    for path in (out / "checkpoints").glob("step_*"):
        if int(path.name.split(".")[0].split("_")[1]) > step:
            path.unlink()
    (out / "summary.json").unlink()


def _same_chunks(folder: Path, want: Path) -> None:
    """The chunk files of `folder` are those of `want`: the same names, arrays and metadata (but the run folder)."""
    from hsrl.data.chunks import list_chunks, read_chunk

    names = [p.name for p in list_chunks(folder)]
    assert names == [p.name for p in list_chunks(want)] and names
    for name in names:
        a, b = read_chunk(folder / name), read_chunk(want / name)
        assert a.arrays.keys() == b.arrays.keys(), name
        for k in a.arrays:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{name}: {k}")
        ma, mb = json.loads(a.meta.to_json()), json.loads(b.meta.to_json())
        ea, eb = ma.pop("extra"), mb.pop("extra")
        assert ea.pop("run") != eb.pop("run") and ea == eb and ma == mb, name


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run (in this process) that also saves its trajectories."""
    out = tmp_path_factory.mktemp("online") / "reference"
    summary = train_online(OnlineConfig(**FLAGS, out=str(out), progress=False,
                                        save_trajectories=str(out / "trajectories")))
    return out, summary


def _same_tree(a, b, where=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _same_tree(a[k], b[k], f"{where}/{k}")
    else:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=where)


def test_killed_runs_resume_to_the_uninterrupted_result(reference, tmp_path):
    ref, ref_summary = reference
    out = tmp_path / "killed"
    rng = np.random.default_rng(0)
    kills = 0
    traj = out / "trajectories"
    for _ in range(2):  # killed twice, at random moments after it has saved something new
        before = _checkpoints(out) if out.exists() else 0
        proc = subprocess.Popen(_cli(out, f"--save-trajectories={traj}"), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline and (not (out / "checkpoints").exists()
                                                                  or _checkpoints(out) <= before):
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.6))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 1 and 0 < _checkpoints(out) < FLAGS["steps"], "the run was cut before its end"
    summary = train_online(OnlineConfig(**FLAGS, out=str(out), progress=False, save_trajectories=str(traj)))
    assert summary["resumed_from"] and summary["resumed_from"] > 0
    # the same chunk files (rows, values, metadata) as the run that was never stopped, whichever chunks the kills
    # left after the checkpoints; the counts go on from the saved run's
    _same_chunks(traj, ref / "trajectories")
    assert summary["trajectories"]["chunks_written"] == ref_summary["trajectories"]["chunks_written"] == 8
    assert summary["trajectories"]["stopped"] is None and summary["resume_changes"] == []
    # the same parameters, optimiser state, env states and keys as the run that was never stopped
    _same_tree(_final_state(out)["params"], _final_state(ref)["params"], "params")
    _same_tree(_final_state(out)["opt_state"], _final_state(ref)["opt_state"], "opt_state")
    _same_tree(_final_state(out)["resume"]["runner"], _final_state(ref)["resume"]["runner"], "runner")
    # the same metrics, one line per update, none twice
    assert _metrics(out) == _metrics(ref)
    assert [line["step"] for line in _metrics(out)] == list(range(32, 257, 32))
    for k in ("episodes", "return_mean", "craftax_score", "llm_calls", "llm_samples"):
        assert summary[k] == ref_summary[k], k
    assert not list(out.glob("**/.*.tmp")), "no temporary file is left behind"


def test_sigterm_saves_and_exits_with_the_documented_code(tmp_path):
    out = tmp_path / "preempted"
    proc = subprocess.Popen(_cli(out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and not (out / "checkpoints").exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # while it trains (it has saved its first update)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == PREEMPTED_EXIT_CODE == 75, err
    assert "SIGTERM" in err and "rerun the same command to resume" in err
    step = _checkpoints(out)
    assert 0 < step < FLAGS["steps"]
    assert max(json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()) == step, \
        "the update that was running when the signal came finished and was saved"


def test_a_second_signal_exits_at_once(tmp_path):
    """After the first signal the default actions are back: the second one ends the process without waiting."""
    from hsrl.rl.resume import Preemption

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with Preemption() as p:
        assert p.requested is None
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert p.requested == "SIGTERM"
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL and signal.getsignal(signal.SIGINT) == signal.SIG_DFL
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before, "handlers restored"


def test_resume_with_a_changed_flag_is_refused_naming_it(reference, tmp_path):
    ref, _ = reference
    flags = {**FLAGS, "lr": 1e-3}
    with pytest.raises(InputError, match=r"--lr 0\.0002 \(now 0\.001\)"):
        train_online(OnlineConfig(**flags, out=str(ref), progress=False))
    # the same flags with another spec (a --prompt-template file edited in place changes its text's hash, not the
    # flag): the run began with other states, refused too
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(ref, copy)
    (copy / "summary.json").unlink()
    for sidecar in (copy / "checkpoints").glob("step_*.json"):
        meta = json.loads(sidecar.read_text())
        meta["spec_json"] = json.dumps({**json.loads(meta["spec_json"]), "pooling": "last"})
        sidecar.write_text(json.dumps(meta))
    with pytest.raises(InputError, match="another extraction spec; fields that differ: pooling"):
        train_online(OnlineConfig(**FLAGS, out=str(copy), progress=False))
    # flags that change where or how fast are free (the finished run is not trained again; what a resume on another
    # --llm-batch-size records and reads: test_a_resume_on_another_llm_batch_size_is_recorded_with_its_states)
    again = train_online(OnlineConfig(**{**FLAGS, "save_every": 3}, out=str(ref), progress=False, llm_batch_size=7))
    assert again["steps"] == FLAGS["steps"]


def test_preempted_in_an_experiment_keeps_its_finished_updates(tmp_path):
    """An experiment's PPO arm stopped mid-run (the signal an operator or SLURM sends) goes on from its checkpoint
    when the experiment runs again: the updates it had finished are not trained again."""
    from hsrl.experiment.runs import Job, run_job

    train = OnlineConfig(**{**FLAGS, "steps": 128}, hidden=False, out=str(tmp_path / "arm" / "train"), progress=False)
    job = Job(arm="ppo-baseline", algo="ppo", hidden=False, seed=0, run_dir=str(tmp_path / "arm"), train=train,
              eval=None, eval_data=None)
    ckpts = Path(train.out) / "checkpoints"

    sigterm_after_first_checkpoint(ckpts)
    with pytest.raises(Preempted):
        run_job(job)
    kept = [json.loads(x) for x in (Path(train.out) / "metrics.jsonl").read_text().splitlines()]
    assert 0 < len(kept) < 4
    from hsrl.experiment.runs import _train

    summary = _train(job)
    assert summary["resumed"] and summary["step"] == 128
    lines = [json.loads(x) for x in (Path(train.out) / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [32, 64, 96, 128]
    assert lines[:len(kept)] == kept, "the finished updates' lines are the first attempt's, not trained again"


@pytest.fixture(scope="module")
def extractor():
    from hsrl.llm import ExtractionSpec, make_extractor

    return make_extractor(ExtractionSpec(model="minilm", variant="classic"), batch_size=16)


def test_trajectories_hold_what_the_policy_read_and_train_awr(reference, tmp_path, extractor):
    from hsrl.data.chunks import list_chunks, read_chunk
    from hsrl.data.returns import add_returns
    from hsrl.rl.awr import TrainAWRConfig
    from hsrl.rl.awr_seeds import train_awr
    from hsrl.text import render_text

    import shutil

    ref, summary = reference
    folder = tmp_path / "trajectories"  # a copy: `hsrl returns` below adds to the files, the reference stays as made
    shutil.copytree(ref / "trajectories", folder)
    files = list_chunks(folder)
    assert len(files) == summary["updates"] == 8 and summary["trajectories"]["chunks_written"] == 8
    E, T = FLAGS["envs"], FLAGS["num_steps"]
    chunks = [read_chunk(p) for p in files]  # read_chunk loads with allow_pickle=False
    for c in chunks:
        assert c.meta.spec_json is not None and c.meta.extra["source"] == "hsrl online"
    hidden = np.concatenate([c.time_major("hidden_state") for c in chunks])  # (steps, E, H)
    obs = np.concatenate([c.time_major("obs") for c in chunks])
    done = np.concatenate([c.time_major("done") for c in chunks])
    log_prob = np.concatenate([c.time_major("log_prob") for c in chunks])
    assert np.all(log_prob < 0) and np.all(np.isfinite(log_prob))
    # the policy reads a state refreshed every skip_n steps (all environments) and at each episode start, the same
    # state in between (brute force over every step of every environment)
    refreshed = np.zeros(done.shape, bool)
    for t in range(len(done)):
        for e in range(E):
            refreshed[t, e] = t % FLAGS["skip_n"] == 0 or (t > 0 and done[t - 1, e])
    assert done.any(), "episodes ended (and reset) during the run"
    for e in range(E):
        for t in range(1, len(done)):
            if not refreshed[t, e]:
                np.testing.assert_array_equal(hidden[t, e], hidden[t - 1, e])
    want = extractor.extract(list(render_text(obs[refreshed], "classic"))).hidden_state
    np.testing.assert_allclose(hidden[refreshed], want, atol=1e-5)
    # and AWR trains on them after `hsrl returns`, with nothing relabelled
    add_returns(folder, 0.99, show_progress=False)
    result = train_awr(TrainAWRConfig(data_dir=str(folder), out=str(tmp_path / "awr"), steps=4, batch_size=16,
                                      log_every=2, save_every=4, width=32, progress=False))
    assert result["step"] == 4 and np.isfinite(result["metrics"]["critic_loss"])


def test_trajectories_every_n_are_segments_with_returns_cut_at_the_gaps(tmp_path):
    from hsrl.data.chunks import list_chunks, read_chunk
    from hsrl.data.returns import add_returns

    out = tmp_path / "sparse"
    summary = train_online(OnlineConfig(**{**FLAGS, "steps": 128}, hidden=False, out=str(out), progress=False,
                                        save_trajectories=str(out / "traj"), save_trajectories_every=2))
    assert summary["trajectories"]["chunks_written"] == 2
    files = list_chunks(out / "traj")
    metas = [read_chunk(p).meta for p in files]
    assert [m.first_step for m in metas] == [0, 16] and [m.segment for m in metas] == [0, 1]
    assert "hidden_state" not in read_chunk(files[0])
    add_returns(out / "traj", 0.99, show_progress=False)
    first = read_chunk(files[0])
    last_step = first.time_major("return_truncated")[-1]
    assert np.array_equal(last_step, ~first.time_major("done")[-1]), "episodes running at a gap are cut off there"


def test_trajectory_budget_stops_saving_not_training(tmp_path):
    out = tmp_path / "budget"
    with pytest.warns(UserWarning, match="stopped saving"):
        summary = train_online(OnlineConfig(**{**FLAGS, "steps": 96}, hidden=False, out=str(out), progress=False,
                                            save_trajectories=str(out / "traj"), save_trajectories_max_gb=1e-9))
    assert summary["steps"] == 96 and summary["trajectories"]["chunks_written"] == 0
    assert "max-gb" in summary["trajectories"]["stopped"]


def _chunk_updates(folder: Path) -> list[int]:
    """The updates of the chunks in `folder`, in file order ([] for none)."""
    from hsrl.data.chunks import read_meta

    return [read_meta(p).extra["update"] for p in sorted(folder.glob("chunk_*.npz"))]


@pytest.mark.parametrize("how", ["disk full", "budget"])
def test_a_stopped_writer_stays_stopped_after_resume(how, tmp_path, monkeypatch):
    """Saving that stopped before a checkpoint stays stopped in the resumed run, even where it could save again (the
    disk has room, a larger --save-trajectories-max-gb): the folder keeps no gap inside its segment, and `hsrl
    returns` reads it."""
    import errno

    import hsrl.rl.trajectories as trajectories
    from hsrl.data.returns import add_returns

    out, traj = tmp_path / "run", tmp_path / "traj"
    flags = {**FLAGS, "steps": 128}  # 4 updates, a checkpoint after each
    first = dict(save_trajectories_max_gb=1e-9)  # the first chunk already passes the budget
    if how == "disk full":  # the third chunk's write finds the disk full
        write = trajectories.write_chunk

        def full_at_the_third(path, rows, meta):
            if meta.extra["update"] >= 2:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            return write(path, rows, meta)

        monkeypatch.setattr(trajectories, "write_chunk", full_at_the_third)
        first = {}
    with pytest.warns(UserWarning, match="stopped saving"):
        train_online(OnlineConfig(**flags, hidden=False, out=str(out), progress=False, save_trajectories=str(traj),
                                  **first))
    kept = [0, 1] if how == "disk full" else []
    assert _chunk_updates(traj) == kept
    _cut_back(out, 96)  # killed after the checkpoint of update 3: saving had stopped before it
    monkeypatch.undo()  # the disk has room again; the budget is the default (50 GB)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = train_online(OnlineConfig(**flags, hidden=False, out=str(out), progress=False,
                                            save_trajectories=str(traj)))
    assert summary["resumed_from"] == 96 and summary["steps"] == 128
    assert _chunk_updates(traj) == kept, "the resumed run wrote no chunk after the gap"
    assert any("stays stopped" in str(w.message) for w in caught), "the resumed run says saving stays stopped"
    assert summary["trajectories"]["chunks_written"] == len(kept)
    assert ("No space left" if how == "disk full" else "max-gb") in summary["trajectories"]["stopped"]
    if kept:
        assert add_returns(traj, 0.99, show_progress=False)["segments"] == 1


def test_resumed_trajectories_replace_those_after_the_checkpoint_and_refuse_another_runs(tmp_path):
    """A resume deletes the chunks of updates after its checkpoint and writes them again, the same; a folder holding
    another run's chunks (another run folder, or this folder started afresh with other settings) is refused in one
    line, and nothing in it is deleted."""
    from hsrl.data.chunks import list_chunks, read_chunk

    out, traj = tmp_path / "run", tmp_path / "traj"
    flags = {**FLAGS, "steps": 128}
    config = OnlineConfig(**flags, hidden=False, out=str(out), progress=False, save_trajectories=str(traj))
    train_online(config)
    files = list_chunks(traj)
    before = {p.name: (read_chunk(p), p.stat().st_mtime_ns) for p in files}
    _cut_back(out, 64)  # killed after the checkpoint of update 2: the chunks of updates 2 and 3 came after it
    summary = train_online(config)
    assert summary["resumed_from"] == 64 and summary["trajectories"]["chunks_written"] == 4
    assert [p.name for p in list_chunks(traj)] == [p.name for p in files]
    for p in list_chunks(traj):
        chunk, mtime = before[p.name]
        again = read_chunk(p)
        assert again.meta == chunk.meta and all(np.array_equal(again[k], chunk[k]) for k in chunk.arrays)
        assert (p.stat().st_mtime_ns != mtime) == (again.meta.extra["update"] >= 2), f"{p.name} written again"

    def refused(**changes):
        with pytest.raises(InputError) as err:
            train_online(OnlineConfig(**{**flags, **changes}, hidden=False, progress=False,
                                      save_trajectories=str(traj)))
        message = str(err.value)
        assert "chunk_000000.npz, which this run did not write" in message and "\n" not in message
        assert [p.name for p in list_chunks(traj)] == [p.name for p in files], "nothing was deleted"

    refused(out=str(tmp_path / "other"))  # another run folder
    import shutil

    shutil.rmtree(out)  # this run folder deleted, and a fresh run with another seed started in it
    refused(out=str(out), seed=1)


def test_a_resume_on_another_llm_batch_size_is_recorded_with_its_states(reference, tmp_path):
    """--llm-batch-size is free on resume (moving machines is what resuming is for) and recorded: the change (step,
    flag, old, new) in the run config, the checkpoints, the summary and the metrics; the states the resumed run reads
    are those the new batch size computes (equal to the old ones at float rounding)."""
    import shutil

    from hsrl.data.chunks import list_chunks, read_chunk
    from hsrl.llm import ExtractionSpec, make_extractor
    from hsrl.rl.checkpoint import list_checkpoints, read_checkpoint_meta
    from hsrl.text import render_text

    ref, _ = reference
    out, traj = tmp_path / "moved", tmp_path / "traj"
    shutil.copytree(ref, out, ignore=shutil.ignore_patterns("trajectories"))
    _cut_back(out, 224)
    summary = train_online(OnlineConfig(**FLAGS, out=str(out), progress=False, llm_batch_size=7,
                                        save_trajectories=str(traj)))
    change = {"step": 224, "flag": "llm_batch_size", "old": 64, "new": 7}
    assert summary["resumed_from"] == 224 and summary["resume_changes"] == [change]
    assert json.loads((out / "run_config.json").read_text())["resume_changes"] == [change]
    assert read_checkpoint_meta(list_checkpoints(out / "checkpoints")[-1])["resume_changes"] == [change]
    lines = {line["step"]: line for line in _metrics(out)}
    assert lines[256]["resume/changed_flags"] == 1 and "resume/changed_flags" not in lines[224]
    # the states of the resumed update: those the new batch size computes, the old run's at float rounding
    [path] = list_chunks(traj)
    chunk, old = read_chunk(path), read_chunk(ref / "trajectories" / path.name)
    obs, hidden = chunk.time_major("obs"), chunk.time_major("hidden_state")
    np.testing.assert_array_equal(obs[0], old.time_major("obs")[0])  # the run went on from the same environments
    at = np.arange(len(obs)) % FLAGS["skip_n"] == 0  # every environment refreshed
    new = make_extractor(ExtractionSpec(model="minilm", variant="classic"), batch_size=7)
    want = np.stack([new.extract(list(render_text(o, "classic"))).hidden_state for o in obs[at]])
    np.testing.assert_allclose(hidden[at], want, atol=1e-5)
    np.testing.assert_allclose(hidden[at], old.time_major("hidden_state")[at], atol=1e-5)
    # a run without the LLM records nothing: the flag changes no number there
    base = tmp_path / "baseline"
    train_online(OnlineConfig(**{**FLAGS, "steps": 64}, hidden=False, out=str(base), progress=False))
    _cut_back(base, 32)
    assert train_online(OnlineConfig(**{**FLAGS, "steps": 64}, hidden=False, out=str(base), progress=False,
                                     llm_batch_size=7))["resume_changes"] == []
