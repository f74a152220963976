import dataclasses
import numpy as np
import pytest

from hsrl.data import list_chunks, read_chunk
from hsrl.data.collect import STATE_FILE, CollectConfig, collect

ENV = "Craftax-Classic-Symbolic-v1"


def _config(out, steps, **kw):
    return CollectConfig(env=ENV, envs=3, steps=steps, out=str(out), chunk_steps=8, seed=7, progress=False, **kw)


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    out = tmp_path_factory.mktemp("collect")
    collect(_config(out, steps=3 * 8 * 4))  # four chunks
    return out


def test_chunks_are_consecutive_time_major(collected):
    files = list_chunks(collected)
    assert len(files) == 4
    chunks = [read_chunk(f) for f in files]
    for i, c in enumerate(chunks):
        assert c.meta.env_name == ENV and c.meta.num_envs == 3 and c.meta.first_step == 8 * i
        assert c.num_rows == 24 and c["text_obs"].shape == (24,)
        assert c.meta.extra["seed"] == 7
    obs = np.concatenate([c.time_major("obs") for c in chunks])  # (T, E, D)
    next_obs = np.concatenate([c.time_major("next_obs") for c in chunks])
    done = np.concatenate([c.time_major("done") for c in chunks])
    # row = t * envs + env: the next observation of step t is the observation of step t + 1 unless it ended
    cont = ~done[:-1]
    np.testing.assert_array_equal(next_obs[:-1][cont], obs[1:][cont])
    log_prob = np.concatenate([c["log_prob"] for c in chunks])
    np.testing.assert_allclose(log_prob, -np.log(17.0), rtol=1e-6)


def test_text_obs_rendered_from_the_same_observation(collected):
    from hsrl.text import render_text

    c = read_chunk(list_chunks(collected)[1])
    assert list(c["text_obs"][:5]) == render_text(c["obs"][:5], "classic")


def test_rerun_resumes_and_matches_an_uninterrupted_run(tmp_path, collected):
    part = tmp_path / "part"
    collect(_config(part, steps=3 * 8 * 2))  # stop after two chunks, as if killed
    assert len(list_chunks(part)) == 2 and (part / STATE_FILE).exists()
    collect(_config(part, steps=3 * 8 * 4))  # rerun asks for four: resumes at chunk 2
    for a, b in zip(list_chunks(part), list_chunks(collected), strict=True):
        ca, cb = read_chunk(a), read_chunk(b)
        for key in ("obs", "action", "reward", "done", "text_obs"):
            np.testing.assert_array_equal(ca[key], cb[key], err_msg=f"{a.name}:{key}")


def test_resume_with_other_flags_is_refused(tmp_path):
    out = tmp_path / "x"
    collect(_config(out, steps=24))
    with pytest.raises(ValueError, match="different seed"):
        collect(CollectConfig(env=ENV, envs=3, steps=48, out=str(out), chunk_steps=8, seed=8, progress=False))
    # --no-text into a folder collected with text would mix chunks with and without text_obs
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(ValueError, match="different text"):
        collect(dataclasses.replace(_config(out, steps=48), text=False))
    assert sorted(p.name for p in out.iterdir()) == before


def test_bad_flags_are_refused(tmp_path):
    with pytest.raises(ValueError, match="--envs"):
        collect(_config(tmp_path, steps=10).__class__(env=ENV, envs=0, out=str(tmp_path)))
    with pytest.raises(ValueError, match="--env"):
        collect(CollectConfig(env="Nope", out=str(tmp_path)))


def test_collect_with_a_trained_policy(tmp_path):
    """`hsrl collect --checkpoint` rolls out a trained (baseline) policy and records its log-probabilities;
    `collect` itself takes the policy from its caller and refuses a checkpoint without one."""
    from hsrl.cli import main
    from hsrl.rl.ppo import OnlineConfig, train_online

    run = tmp_path / "run"
    train_online(OnlineConfig(env=ENV, envs=3, steps=48, num_steps=16, num_minibatches=1, width=16, hidden=False,
                              out=str(run), progress=False))
    out = tmp_path / "data"
    assert main(["collect", "--env", ENV, "--envs", "3", "--steps", "24", "--chunk-steps", "8", "--seed", "7",
                 "--checkpoint", str(run), "--out", str(out), "--no-progress"]) == 0
    c = read_chunk(list_chunks(out)[0])
    assert c.meta.extra["policy"] == str(run)
    assert np.all(c["log_prob"] <= 0) and not np.allclose(c["log_prob"], -np.log(17.0))
    with pytest.raises(ValueError, match="pass its policy"):
        collect(_config(tmp_path / "nopolicy", steps=24, checkpoint=str(run)))


@pytest.mark.parametrize("damage", [b"PK\x03\x04 cut short", b"\x93NUMPY garbage that is not an npz"])
def test_a_corrupt_state_file_is_named_and_the_rerun_starts_over_to_the_same_chunks(tmp_path, collected, damage):
    part = tmp_path / "part"
    collect(_config(part, steps=3 * 8 * 2))
    (part / STATE_FILE).write_bytes(damage)
    (part / f".{STATE_FILE}.abc123.tmp").write_bytes(b"left by a kill")
    (part / ".chunk_000002.npz.def456.tmp").write_bytes(b"left by a kill")
    with pytest.warns(UserWarning, match=f"{STATE_FILE} is corrupt .* collecting again from chunk 0"):
        collect(_config(part, steps=3 * 8 * 4))
    assert not list(part.glob("*.tmp")) and not list(part.glob(".*.tmp"))
    for a, b in zip(list_chunks(part), list_chunks(collected), strict=True):
        np.testing.assert_array_equal(read_chunk(a)["obs"], read_chunk(b)["obs"])


def test_scripted_policy_beats_random(tmp_path):
    """`--policy scripted` plays better than random (data whose actions differ in value), and its flags resume."""
    def rewards(policy, **kw):
        out = tmp_path / policy
        collect(CollectConfig(env="Craftax-Classic-Symbolic-v1", envs=8, steps=1600, chunk_steps=200, out=str(out),
                              policy=policy, max_episode_steps=100, seed=3, progress=False, text=False, **kw))
        chunks = [read_chunk(p, ["reward", "done", "action"]) for p in list_chunks(out)]
        return (np.concatenate([c["reward"] for c in chunks]), np.concatenate([c["done"] for c in chunks]),
                np.concatenate([c["action"] for c in chunks]))

    scripted, done, action = rewards("scripted", epsilon=0.25)
    random, _, _ = rewards("random")
    print("reward per episode: scripted", scripted.sum() / done.sum(), "random", random.sum() / done.sum())
    assert scripted.sum() > 1.5 * random.sum()
    assert len(np.unique(action)) == 17  # epsilon keeps every action in the data
    with pytest.raises(ValueError, match="epsilon"):
        CollectConfig(policy="scripted", epsilon=1.5).check()
    with pytest.raises(ValueError, match="Craftax-Classic-Symbolic"):
        CollectConfig(policy="scripted", env="Craftax-Symbolic-v1").check()
