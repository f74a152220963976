"""A segment's first row (`ChunkMeta.segment`: a gap in imported data, a chunk of `online --save-trajectories-every N`)
is an episode start for every schedule that walks rows across chunk files: the --hidden-skip-n refresh, history
windows and probes' episodes. Each is checked against a plain Python walk over segments and episodes."""

import json

import numpy as np
import pytest
from rl_helpers import ENV, OBS_DIM, SPEC

from hsrl.data import ChunkMeta, add_returns, chunk_path, inspect_chunk, list_chunks, load_dataset, write_chunk
from hsrl.data.chunks import segment_start_rows
from hsrl.data.label import row_history
from hsrl.data.projection import ObservationProjection, dataset_states, history_rows
from hsrl.data.refresh import refresh_rows
from hsrl.probe import ProbeConfig, dataset_episode_ids, episode_ids

HISTORY_SPEC = json.dumps({"model": "tiny", "layer": -1, "tokens": 1, "pooling": "mean", "history": 2})


# ---- the brute force: one environment, one step at a time -----------------------------------------------------------


def _walk(done, num_envs, seg_steps, firsts):
    """Per (t, env), by plain loops: (episode number of that env, steps since its episode began, collection step).
    `seg_steps`: the steps where a segment begins (0 included); `firsts`: each segment's collection step there."""
    T = len(done) // num_envs
    d = np.asarray(done, bool).reshape(T, num_envs)
    episode = np.zeros((T, num_envs), np.int64)
    age = np.zeros((T, num_envs), np.int64)
    step = np.zeros(T, np.int64)
    for e in range(num_envs):
        seg, count, since, t0 = -1, -1, 0, 0
        for t in range(T):
            if t in seg_steps:
                seg, t0 = seg + 1, t
            if t in seg_steps or d[t - 1, e]:  # a gap, or the step after an episode's last
                count, since = count + 1, 0
            else:
                since += 1
            episode[t, e], age[t, e], step[t] = count, since, firsts[seg] + t - t0
    return episode, age, step


def _refresh_loop(done, num_envs, skip_n, seg_steps, firsts):
    _, age, step = _walk(done, num_envs, seg_steps, firsts)
    out = np.empty(age.shape, np.int64)
    for e in range(num_envs):
        last = None
        for t in range(len(age)):
            if age[t, e] == 0 or step[t] % skip_n == 0:
                last = t
            out[t, e] = last * num_envs + e
    return out.reshape(-1)


def _history_loop(done, num_envs, k, seg_steps):
    _, age, _ = _walk(done, num_envs, seg_steps, [0] * len(seg_steps))
    out = []
    for t in range(len(age)):
        for e in range(num_envs):
            rows = [(t - j) * num_envs + e for j in range(min(age[t, e], k), 0, -1)]
            out.append([-1] * (k - len(rows)) + rows)
    return np.array(out, np.int64).reshape(len(done), k)


def _same_partition(a, b):
    """Two labelings group the rows the same way."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def _random_case(rng, num_envs):
    T = int(rng.integers(1, 40))
    done = rng.random(T * num_envs) < rng.choice([0.0, 0.1, 0.3])
    seg_steps = sorted({0} | set(rng.choice(np.arange(1, T), size=rng.integers(0, 4), replace=True).tolist())
                       if T > 1 else {0})
    seg_rows = np.zeros(T * num_envs, bool)
    for t in seg_steps:
        seg_rows[t * num_envs:(t + 1) * num_envs] = True
    return T, done, seg_steps, seg_rows


# ---- the functions, on random done masks and segment boundaries -----------------------------------------------------


@pytest.mark.parametrize("num_envs", [1, 2, 3, 5])
def test_refresh_rows_restart_at_every_segment_as_a_loop_over_segments_and_episodes(num_envs):
    rng = np.random.default_rng(num_envs)
    for _ in range(60):
        T, done, seg_steps, seg_rows = _random_case(rng, num_envs)
        skip_n = int(rng.choice([1, 2, 3, 5, 8]))
        firsts = rng.integers(0, 50, len(seg_steps)).tolist()  # each segment's collection step (known, or 0)
        got = refresh_rows(done, num_envs, skip_n, firsts, seg_rows)
        np.testing.assert_array_equal(got, _refresh_loop(done, num_envs, skip_n, seg_steps, firsts))
        # the same as each segment on its own (each checked against online PPO's refresh in test_fusion)
        bounds = [t * num_envs for t in seg_steps] + [T * num_envs]
        parts = [lo + refresh_rows(done[lo:hi], num_envs, skip_n, first)
                 for lo, hi, first in zip(bounds, bounds[1:], firsts)]
        np.testing.assert_array_equal(got, np.concatenate(parts))
        assert (got[seg_rows] == np.flatnonzero(seg_rows)).all()  # a segment's first row reads its own state


def test_refresh_rows_refuse_what_is_not_a_segment_schedule():
    done = np.zeros(12, bool)
    half = np.zeros(12, bool)
    half[6] = True  # one environment of step 3
    with pytest.raises(ValueError, match="every environment of a step"):
        refresh_rows(done, 2, 3, 0, half)
    both = half.copy()
    both[7] = True
    with pytest.raises(ValueError, match="one per segment"):
        refresh_rows(done, 2, 3, [0], both)  # two segments, one first step
    with pytest.raises(ValueError, match="shape"):
        refresh_rows(done, 2, 3, 0, both[:-2])


@pytest.mark.parametrize("num_envs", [1, 2, 3, 5])
def test_history_windows_stop_at_every_segment_as_a_loop(num_envs):
    rng = np.random.default_rng(10 + num_envs)
    for _ in range(40):
        T, done, seg_steps, seg_rows = _random_case(rng, num_envs)
        k = int(rng.integers(1, 5))
        want = _history_loop(done, num_envs, k, seg_steps)
        np.testing.assert_array_equal(history_rows(done, num_envs, k, seg_rows), want)
        # labelling's prompt history is the same rows (texts are the row numbers)
        texts = np.array([str(i) for i in range(T * num_envs)])
        action = rng.integers(0, 17, T * num_envs)
        history = row_history(texts, action, done, num_envs, k, segment_start=seg_rows)
        for row, entries in enumerate(history):
            assert [int(text) for text, _ in entries] == [r for r in want[row] if r >= 0], row
            assert [a for _, a in entries] == [int(action[r]) for r in want[row] if r >= 0]


@pytest.mark.parametrize("num_envs", [1, 2, 3, 5])
def test_probe_episodes_end_at_every_segment_as_a_loop(num_envs):
    rng = np.random.default_rng(20 + num_envs)
    for _ in range(40):
        T, done, seg_steps, seg_rows = _random_case(rng, num_envs)
        episode, _, _ = _walk(done, num_envs, seg_steps, [0] * len(seg_steps))
        want = (episode * num_envs + np.arange(num_envs)).reshape(-1)  # (env, its episode number) as one id
        got = episode_ids(done, num_envs, seg_rows)
        assert _same_partition(got, want)
        if len(seg_steps) > 1 and not done.any():  # no episode ends: one episode per environment and segment
            assert len(np.unique(got)) == num_envs * len(seg_steps)


# ---- through chunk files: a gap in the recording ---------------------------------------------------------------------


def _write(folder, sizes, segments, first_steps, num_envs, rng, spec=SPEC, dones=None):
    """Chunks of `sizes[i]` steps, segment `segments[i]`, first_step `first_steps[i]`; `hidden_state` column 0 is the
    global row index (exact in float32). Returns the rows' done."""
    folder.mkdir(parents=True, exist_ok=True)
    offset, all_done = 0, []
    for i, (steps, segment, first) in enumerate(zip(sizes, segments, first_steps)):
        n = steps * num_envs
        row = np.arange(offset, offset + n, dtype=np.float32)
        done = rng.random(n) < 0.15 if dones is None else dones[offset:offset + n]
        obs = np.zeros((n, OBS_DIM), np.float32)
        obs[:, :8] = rng.random((n, 8))
        arrays = {"obs": obs, "next_obs": obs, "action": rng.integers(0, 17, n),
                  "reward": rng.random(n).astype(np.float32), "done": done,
                  "hidden_state": np.stack([row, -row], 1)}
        write_chunk(chunk_path(folder, i), arrays, ChunkMeta(env_name=ENV, num_envs=num_envs, obs_kind="symbolic",
                                                             first_step=first, spec_json=spec, segment=segment))
        all_done.append(done)
        offset += n
    add_returns(folder, 0.99, show_progress=False)
    return np.concatenate(all_done)


@pytest.mark.parametrize("first_steps, want", [
    # imported data: no step numbers, periodic refreshes counted from the gap
    ([None, None], [0, 0, 0, 0, 0, 5, 5, 5, 8, 8, 8, 8, 8, 13, 13, 13]),
    # online --save-trajectories-every 3 with 8-step updates: updates 0 and 3, the second at collection step 24, so
    # a refresh at the gap and at steps 25 and 30 (rows 9 and 14), as online PPO refreshed
    ([0, 24], [0, 0, 0, 0, 0, 5, 5, 5, 8, 9, 9, 9, 9, 9, 14, 14]),
])
def test_hidden_skip_n_refreshes_at_a_gap_and_counts_its_steps(tmp_path, first_steps, want):
    """The issue's example: 16 steps of one environment with no episode end, in two chunks of two segments. Before,
    rows 8 and 9 read row 5's state (from before the gap) and the refreshes after it fell on rows 10 and 15."""
    from hsrl.rl.awr import load_awr_data

    _write(tmp_path, [8, 8], [0, 1], first_steps, 1, np.random.default_rng(0), dones=np.zeros(16, bool))
    got = load_awr_data(tmp_path, hidden=True, truncated=True, show_progress=False, hidden_skip_n=5)
    assert got.arrays["hidden_state"][:, 0].astype(int).tolist() == want
    assert refresh_rows(np.zeros(16, bool), 1, 5, 0).tolist()[8:10] == [5, 5]  # without segments: one run


@pytest.mark.parametrize("num_envs", [1, 3])
def test_hidden_skip_n_across_random_gaps_matches_the_loop(tmp_path, num_envs):
    """Random file sizes, gaps and step numbers (online-like where known): every row reads the state the loop over
    segments and episodes gives, the held-out copy included (--cache-dir)."""
    from hsrl.rl.awr import load_awr_data

    rng = np.random.default_rng(num_envs)
    for trial in range(3):
        files = int(rng.integers(2, 6))
        sizes = rng.integers(1, 9, files).tolist()
        segments = np.cumsum([0] + (rng.random(files - 1) < 0.5).astype(int).tolist()).tolist()
        known = trial != 0
        first_steps, step = [], 0
        for i in range(files):
            if i and segments[i] != segments[i - 1]:
                step += int(rng.integers(1, 30))  # the steps not saved
            first_steps.append(step if known else None)
            step += sizes[i]
        folder = tmp_path / f"data{trial}"
        done = _write(folder, sizes, segments, first_steps, num_envs, rng)
        seg_steps, firsts, t = [], [], 0
        for i in range(files):
            if i == 0 or segments[i] != segments[i - 1]:
                seg_steps.append(t)
                firsts.append(first_steps[i] or 0)
            t += sizes[i]
        for skip_n in (2, 5):
            want = _refresh_loop(done, num_envs, skip_n, seg_steps, firsts)
            for cache in (None, str(tmp_path / f"cache{trial}")):
                got = load_awr_data(folder, hidden=True, truncated=True, show_progress=False, hidden_skip_n=skip_n,
                                    cache_dir=cache)
                np.testing.assert_array_equal(got.arrays["hidden_state"][:, 0], want)
        infos = [inspect_chunk(p) for p in list_chunks(folder)]
        assert segment_start_rows(infos).reshape(-1, num_envs).any(1).nonzero()[0].tolist() == seg_steps


def test_control_history_across_gaps_is_each_segment_read_alone(tmp_path):
    """The control's history (`dataset_states`, what train-awr --control and offline evaluation read) across a gap
    is that of each segment read as data of its own, and agrees with the loop's rows."""
    rng = np.random.default_rng(5)
    sizes, segments = [4, 5, 3, 6], [0, 0, 1, 2]
    _write(tmp_path, sizes, segments, [0, 4, 20, 40], 2, rng, spec=HISTORY_SPEC)
    ds = load_dataset(tmp_path, ["obs", "action", "done"], show_progress=False)
    projection = ObservationProjection((OBS_DIM,), 16, history=2, num_actions=17)
    got = dataset_states(projection, ds)
    bounds = [0, 9 * 2, 12 * 2, 18 * 2]  # rows where segments begin
    for lo, hi in zip(bounds, bounds[1:]):
        alone = projection.of_rows(ds["obs"][lo:hi], ds["action"][lo:hi], ds["done"][lo:hi], 2)
        np.testing.assert_allclose(got[lo:hi], alone, rtol=1e-6, atol=1e-6)
    seg_rows = segment_start_rows([inspect_chunk(p) for p in list_chunks(tmp_path)])
    assert np.flatnonzero(seg_rows).tolist() == [0, 1, 18, 19, 24, 25]
    np.testing.assert_array_equal(history_rows(ds["done"], 2, 2, seg_rows), _history_loop(ds["done"], 2, 2, [0, 9, 12]))


def test_probe_counts_the_episodes_a_gap_ends(tmp_path):
    """Two environments, no episode end, two segments: four episodes (two per side of the gap), enough to split by
    episode; before, the rows on either side were one episode and the data was refused as two."""
    rng = np.random.default_rng(0)
    _write(tmp_path, [6, 6], [0, 1], [None, None], 2, rng, dones=np.zeros(24, bool))
    ds = load_dataset(tmp_path, ["done"], show_progress=False)
    ids = dataset_episode_ids(ds).reshape(12, 2)
    assert len(np.unique(ids)) == 4
    assert (ids[:6] != ids[6:]).all() and (ids[:6] == ids[0]).all() and (ids[6:] == ids[6]).all()
    ProbeConfig(str(tmp_path), out=str(tmp_path / "p")).check()  # four episodes: accepted
