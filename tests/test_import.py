"""`hsrl import`: folders written the way the Craftax_Baselines family of scripts writes them (built here with numpy:
no metadata, pickled text, uint8 done, float actions, per-token states without counts, float pixels, bit-packed maps,
gaps between batch indices) become chunks that `hsrl returns`, `train-awr`, `probe` and `experiment --offline`
accept, with the same rows and values; pickles are refused without --trust-pickle; a rerun resumes or refuses."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from hsrl.cli import main
from hsrl.data import DataFileError, list_chunks, load_dataset, read_chunk
from hsrl.data.importer import ImportConfig, import_trajectories, infer_num_envs
from hsrl.errors import InputError

CLASSIC = "Craftax-Classic-Symbolic-v1"
PIXELS = "Craftax-Classic-Pixels-v1"
TILES, BLOCKS, MOBS, AUX = 63, 17, 4, 22  # Craftax-Classic: 7 x 9 tiles of 17 block planes + 4 mobs, then 22 scalars
MAP = TILES * (BLOCKS + MOBS)


def classic_obs(rng, shape):
    """Valid Craftax-Classic symbolic observations (one block per tile, a few mobs, scalars as the env scales them)."""
    n = math.prod(shape)
    grid = np.zeros((n, TILES, BLOCKS + MOBS), np.float32)
    block = rng.integers(0, BLOCKS, (n, TILES))
    np.put_along_axis(grid, block[..., None], 1.0, axis=2)
    grid[..., BLOCKS:] = rng.random((n, TILES, MOBS)) < 0.03
    aux = np.zeros((n, AUX), np.float32)
    aux[:, :16] = rng.integers(0, 10, (n, 16)) / np.float32(10)  # inventory and intrinsics, count / 10
    aux[np.arange(n), 16 + rng.integers(0, 4, n)] = 1.0  # facing
    aux[:, 20] = rng.random(n)  # light level
    aux[:, 21] = rng.random(n) < 0.1  # sleeping
    return np.concatenate([grid.reshape(n, MAP), aux], axis=1).reshape(shape + (MAP + AUX,))


def walking_obs(rng, done, size=24):
    """Observations (steps + 1, envs, D) of players walking in worlds of their own, as Craftax shows them: a 7 x 9
    view of the blocks around the player (a `size` x `size` world of random blocks), which moves at most one tile a
    step and changes at most the tile below the player (acted on); after a done the next episode starts in a new
    world at a new place (auto-reset). Mobs and scalars are random (`classic_obs`)."""
    steps, envs = done.shape
    obs = classic_obs(rng, (steps + 1, envs))
    worlds = rng.integers(0, BLOCKS, (envs, size, size))
    pos = rng.integers(4, size - 5, (envs, 2))
    moves = np.array([[0, 0], [1, 0], [-1, 0], [0, 1], [0, -1]])
    for t in range(steps + 1):
        if t:
            pos = np.clip(pos + moves[rng.integers(0, 5, envs)], 4, size - 5)
            reset = done[t - 1]
            worlds[reset] = rng.integers(0, BLOCKS, (int(reset.sum()), size, size))
            pos[reset] = rng.integers(4, size - 5, (int(reset.sum()), 2))
            act = rng.random(envs) < 0.3
            worlds[act, pos[act, 0] + 1, pos[act, 1]] = rng.integers(0, BLOCKS, int(act.sum()))
        for e in range(envs):
            view = worlds[e, pos[e, 0] - 3:pos[e, 0] + 4, pos[e, 1] - 4:pos[e, 1] + 5].reshape(TILES)
            grid = obs[t, e, :MAP].reshape(TILES, BLOCKS + MOBS)
            grid[:, :BLOCKS] = 0
            grid[np.arange(TILES), view] = 1
    return obs


def legacy_run(rng, *, steps, envs, hidden=16, tokens=5, pixels=False, p_done=0.12, walk=False):
    """One continuous run of `steps` x `envs` (what a tool saw before it saved some of it): obs per (t, env), with one
    more step for the last next_obs; auto-reset, so a done row's next obs is the next episode's first. `walk`: the
    observations continue from step to step as Craftax's do (`walking_obs`), else they are drawn independently."""
    if walk:
        done = rng.random((steps, envs)) < p_done
        obs = walking_obs(rng, done)
    elif pixels:
        obs = (rng.integers(0, 256, (steps + 1, envs, 63, 63, 3)) / 255.0).astype(np.float32)
    else:
        obs = classic_obs(rng, (steps + 1, envs))
    if not walk:
        done = rng.random((steps, envs)) < p_done
    counts = rng.integers(1, tokens + 1, (steps, envs))
    states = rng.standard_normal((steps, envs, tokens, hidden)).astype(np.float16)
    states[np.arange(tokens) >= counts[..., None]] = 0  # zero padding after each row's generated tokens
    return {"obs": obs, "done": done, "action": rng.integers(0, 17, (steps, envs)),
            "reward": rng.standard_normal((steps, envs)).astype(np.float32),
            "log_prob": -rng.random((steps, envs)).astype(np.float32), "states": states, "counts": counts}


def write_legacy(folder, run, batches, batch_steps, *, compact=False, per_token=True, pickled=True):
    """Save the run's batches `batches` (indices; missing ones are gaps) as trajectories_batch_NNNNNN.npz, as those
    tools save them: flattened time-major, text as object arrays, done as uint8, actions as float."""
    folder.mkdir(parents=True, exist_ok=True)
    for b in batches:
        t = slice(b * batch_steps, (b + 1) * batch_steps)
        flat = lambda x: x.reshape((-1,) + x.shape[2:])  # noqa: E731
        n = flat(run["done"][t]).shape[0]
        data = {"action": flat(run["action"][t]).astype(np.float32), "reward": flat(run["reward"][t]),
                "done": flat(run["done"][t]).astype(np.uint8), "log_prob": flat(run["log_prob"][t])}
        obs = flat(run["obs"][t])
        nxt = flat(run["obs"][b * batch_steps + 1:(b + 1) * batch_steps + 1])
        if compact:
            data["obs_map_bits"] = np.packbits(obs[:, :MAP].astype(np.uint8), axis=1, bitorder="little")
            data["obs_aux"] = obs[:, MAP:].astype(np.float16)
            data["obs_map_dim"] = np.array(MAP, np.int32)
            data["return_to_go"] = np.zeros(n, np.float32)  # their own returns: recomputed by hsrl returns
        else:
            data["obs"], data["next_obs"] = obs, nxt
        texts = [f"batch {b} row {i}: Map: tree" for i in range(n)]
        data["text_obs"] = np.array(texts, dtype=object) if pickled else np.array(texts)
        data["text_generated"] = np.array([f"plan {i} \u00fc" for i in range(n)], dtype=object if pickled else str)
        states = flat(run["states"][t])
        data["hidden_state"] = states if per_token else states.astype(np.float32).sum(1).astype(np.float16)
        np.savez_compressed(folder / f"trajectories_batch_{b:06d}.npz", **data)


def expected_returns(reward, done, segments, gamma):
    """Returns-to-go per segment ((T, E) arrays of each), computed here: the carry starts at 0 and truncated at each
    segment's end."""
    out, trunc = [], []
    for s in segments:
        g, tr = np.zeros(reward.shape[1]), np.ones(reward.shape[1], bool)
        rs, ts = np.empty((len(s), reward.shape[1])), np.empty((len(s), reward.shape[1]), bool)
        for t in reversed(s):
            g = reward[t] + gamma * np.where(done[t], 0.0, g)
            tr = tr & ~done[t]
            rs[s.index(t)], ts[s.index(t)] = g, tr
        out.append(rs)
        trunc.append(ts)
    return np.concatenate(out), np.concatenate(trunc)


STEPS, ENVS, BATCH_STEPS, BATCHES = 60, 6, 10, (0, 1, 2, 4, 5)  # batch 3 was not saved: a gap


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("import")
    run = legacy_run(np.random.default_rng(0), steps=STEPS, envs=ENVS)
    write_legacy(root / "src", run, BATCHES, BATCH_STEPS)
    summary = import_trajectories(ImportConfig(str(root / "src"), str(root / "dst"), trust_pickle=True,
                                               progress=False))
    return root, run, summary


def _rows(run, key, batches=BATCHES):
    """The run's rows of the saved batches, time-major as (T, E, ...) over the kept steps."""
    return np.concatenate([run[key][b * BATCH_STEPS:(b + 1) * BATCH_STEPS] for b in batches])


def test_import_gives_the_same_rows_and_values(imported):
    root, run, summary = imported
    assert summary.num_envs == ENVS and summary.segments == 2 and summary.written == len(BATCHES)
    assert [p.name for p in list_chunks(root / "dst")] == [f"chunk_{b:06d}.npz" for b in BATCHES]
    chunks = [read_chunk(p) for p in list_chunks(root / "dst")]
    assert [c.meta.segment for c in chunks] == [0, 0, 0, 1, 1]
    cat = lambda key: np.concatenate([c[key] for c in chunks])  # noqa: E731
    flat = lambda key: _rows(run, key).reshape((-1,) + run[key].shape[2:])  # noqa: E731
    np.testing.assert_array_equal(cat("obs"), flat("obs"))
    assert cat("action").dtype == np.int32 and cat("done").dtype == bool
    np.testing.assert_array_equal(cat("action"), flat("action"))
    np.testing.assert_array_equal(cat("done"), flat("done"))
    np.testing.assert_array_equal(cat("reward"), flat("reward"))
    np.testing.assert_array_equal(cat("log_prob"), flat("log_prob"))
    assert cat("text_obs")[ENVS] == "batch 0 row 6: Map: tree" and cat("text_generated")[3] == "plan 3 \u00fc"
    # per-token states stored as they were, with the counts the zero padding gave
    np.testing.assert_array_equal(cat("hidden_state"), flat("states"))
    np.testing.assert_array_equal(cat("hidden_tokens"), flat("counts"))
    # what the source could not say is recorded
    made = chunks[0].meta.extra["import"]
    assert chunks[0].meta.spec_json is None and made["hidden_state"].startswith("foreign")
    assert made["file"] == "trajectories_batch_000000.npz" and made["continues_into"] == "trajectories_batch_000001.npz"
    assert chunks[2].meta.extra["import"]["continues_into"] is None  # batch 3 is missing
    assert "the source tool's rendering" in made["text_obs"]
    assert made["num_envs_source"].startswith("inferred from next_obs")


def test_next_obs_is_kept_where_known_and_marked_where_not(imported):
    """The source's next_obs is the next step's obs; at done rows it is the next episode's first (auto-reset), not
    the terminal observation: those rows, and done rows before a gap or the end, are marked unknown (zeros)."""
    root, run, _ = imported
    chunks = [read_chunk(p) for p in list_chunks(root / "dst")]
    for b, chunk in zip(BATCHES, chunks):
        known = chunk.time_major("next_obs_known")
        done = run["done"][b * BATCH_STEPS:(b + 1) * BATCH_STEPS]
        np.testing.assert_array_equal(known, ~done)
        want = run["obs"][b * BATCH_STEPS + 1:(b + 1) * BATCH_STEPS + 1]
        got = chunk.time_major("next_obs")
        np.testing.assert_array_equal(got[known], want[known])
        assert not got[~known].any()


def test_returns_never_span_a_gap(imported, tmp_path):
    root, run, _ = imported
    assert main(["returns", str(root / "dst"), "--gamma", "0.9", "--no-progress"]) == 0
    chunks = [read_chunk(p) for p in list_chunks(root / "dst")]
    got = np.concatenate([c.time_major("return_to_go") for c in chunks])
    trunc = np.concatenate([c.time_major("return_truncated") for c in chunks])
    kept = [t for b in BATCHES for t in range(b * BATCH_STEPS, (b + 1) * BATCH_STEPS)]
    reward, done = run["reward"][kept], run["done"][kept]
    segments = [list(range(0, 30)), list(range(30, 50))]
    want, want_trunc = expected_returns(reward, done, segments, 0.9)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(trunc, want_trunc)
    # not vacuous: episodes run into the gap, and joined across it their returns would differ
    assert trunc[29].any() and not trunc[:29].all()
    joined, _ = expected_returns(reward, done, [list(range(50))], 0.9)
    assert np.abs(joined[:30] - want[:30]).max() > 1e-3
    from hsrl.data.stats import dataset_stats

    stats = dataset_stats(root / "dst", show_progress=False)
    assert stats["cut_at_gaps"] == int((~done[29]).sum()) > 0  # episodes running into the gap end there


def test_train_awr_probe_and_experiment_accept_the_import(imported, tmp_path):
    """The imported chunks train (AWR, hidden states pooled over each row's own tokens), probe and run an offline
    experiment; the loader's pooled rows are the mean of each row's nonzero token states."""
    from hsrl.experiment.config import ExperimentConfig, run_experiment
    from hsrl.probe import ProbeConfig, probe
    from hsrl.rl import load_policy
    from hsrl.rl.awr import TrainAWRConfig
    from hsrl.rl.awr_seeds import train_awr

    root, run, _ = imported
    dst = root / "dst"
    if "return_to_go" not in read_chunk(list_chunks(dst)[0]):
        assert main(["returns", str(dst), "--no-progress"]) == 0
    pooled = load_dataset(dst, ["hidden_state"], show_progress=False)["hidden_state"]
    states, counts = _rows(run, "states").reshape(-1, 5, 16), _rows(run, "counts").reshape(-1)
    want = np.stack([s[:c].astype(np.float64).mean(0) for s, c in zip(states, counts)])
    np.testing.assert_allclose(pooled, want, rtol=1e-3, atol=1e-3)
    result = train_awr(TrainAWRConfig(str(dst), out=str(tmp_path / "awr"), steps=10, log_every=5, save_every=10,
                                      batch_size=32, width=16, progress=False))
    assert result["step"] == 10
    policy = load_policy(tmp_path / "awr")
    assert policy.network.hidden_size == 16 and policy.spec_json is None
    _eval_needs_the_spec_named(tmp_path / "awr", tmp_path)
    report = probe(ProbeConfig(str(dst), out=str(tmp_path / "probe"), max_rows=300, min_rows=5, progress=False))
    assert report["spec_json"] is None and report["features"]
    # held out: the last chunk (after the gap) scores the arms trained on the others
    import shutil

    files = list_chunks(dst)
    for folder, part in ((tmp_path / "train", files[:-1]), (tmp_path / "held", files[-1:])):
        folder.mkdir()
        for path in part:
            shutil.copy(path, folder / path.name)
    exp = run_experiment(ExperimentConfig(offline=str(tmp_path / "train"), eval_data=str(tmp_path / "held"),
                                          out=str(tmp_path / "exp"), seeds=1, awr_steps=5, awr_batch_size=32,
                                          awr_save_every=5, width=16, control=False, progress=False))
    assert {r["arm"] for r in exp["runs"]} == {"awr-baseline", "awr-hidden"}
    # without --eval-data the arms would need live states of a spec nobody knows: refused before any arm trains
    with pytest.raises(InputError, match="without an extraction spec.*--eval-data"):
        run_experiment(ExperimentConfig(offline=str(dst), out=str(tmp_path / "exp2"), seeds=1, awr_steps=5,
                                        control=False, progress=False))
    assert not (tmp_path / "exp2" / "runs").exists()


def _eval_needs_the_spec_named(run, tmp_path):
    """A policy trained on foreign states: `hsrl eval` with live states refuses before any work until --spec names
    the spec (JSON or a file), and then computes them by it."""
    from hsrl.evaluate import EvalConfig
    from hsrl.llm import ExtractionSpec

    with pytest.raises(InputError, match="without an extraction spec.*--spec"):
        EvalConfig(str(run)).check()
    assert main(["eval", str(run), "--out", str(tmp_path / "eval")]) == 2 and not (tmp_path / "eval").exists()
    spec = ExtractionSpec(model="minilm", variant="classic")
    (tmp_path / "spec.json").write_text(spec.to_json())
    for named in (spec.to_json(), str(tmp_path / "spec.json")):
        config = EvalConfig(str(run), spec=named)
        config.check()
        assert config.live_spec_json(None, run) == spec.to_json()
    with pytest.raises(InputError, match="--spec: not an extraction spec"):
        EvalConfig(str(run), spec='{"model": "minilm", "colour": 1}').check()
    with pytest.raises(InputError, match="differs from the spec .* in layer"):
        EvalConfig(str(run), spec=spec.to_json()).live_spec_json(spec.replace(layer=2).to_json(), run)


def test_pickled_arrays_are_refused_without_the_flag(tmp_path, capsys):
    run = legacy_run(np.random.default_rng(1), steps=4, envs=2)
    write_legacy(tmp_path / "src", run, (0, 1), 2)
    assert main(["import", str(tmp_path / "src"), str(tmp_path / "dst")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "trajectories_batch_000000.npz: text_generated: object array" in err or \
        "trajectories_batch_000000.npz: text_obs: object array" in err
    assert "runs whatever code the file holds" in err and "--trust-pickle" in err
    assert not (tmp_path / "dst").exists()
    # without object arrays no flag is needed
    write_legacy(tmp_path / "plain", run, (0, 1), 2, pickled=False)
    assert main(["import", str(tmp_path / "plain"), str(tmp_path / "dst"), "--no-progress"]) == 0
    assert read_chunk(list_chunks(tmp_path / "dst")[0])["text_obs"][0] == "batch 0 row 0: Map: tree"


def test_the_compact_variant_rebuilds_obs_and_next_obs(tmp_path):
    """obs_map_bits + obs_aux (float16, no next_obs) give the symbolic vectors back (the aux at float16 precision);
    next_obs is rebuilt from the next step, across files of one segment, and marked unknown at done rows and at
    the last step before a gap or the end. The number of environments is read from the map views (rows E apart
    continue each other) and a --num-envs they contradict is refused."""
    run = legacy_run(np.random.default_rng(2), steps=40, envs=3, walk=True)
    write_legacy(tmp_path / "src", run, (0, 1, 3), 10, compact=True, pickled=False)
    for wrong in (1, 2, 5, 6):  # 6: every other step of each env, 5 and 2 and 1: rows of other envs
        with pytest.raises(DataFileError, match=rf"trajectories_batch_000000.npz: obs: contradicts --num-envs {wrong}: "
                                                rf"only \d+% .* at 3 100% do: the rows interleave 3 environments "
                                                rf"\(pass --num-envs 3\)"):
            import_trajectories(ImportConfig(str(tmp_path / "src"), str(tmp_path / "dst"), num_envs=wrong,
                                             progress=False))
        assert not (tmp_path / "dst").exists()
    summary = import_trajectories(ImportConfig(str(tmp_path / "src"), str(tmp_path / "dst"), progress=False))
    assert summary.num_envs == 3 and summary.num_envs_source.startswith("inferred from map continuity")
    assert summary.segments == 2 and "return_to_go" in summary.dropped
    chunks = [read_chunk(p) for p in list_chunks(tmp_path / "dst")]
    assert "return_to_go" not in chunks[0] and chunks[0].meta.num_envs == 3
    assert {c.meta.extra["import"]["num_envs_source"] for c in chunks} == {summary.num_envs_source}
    given = import_trajectories(ImportConfig(str(tmp_path / "src"), str(tmp_path / "given"), num_envs=3,
                                             progress=False))
    assert given.num_envs_source.startswith("--num-envs, checked: map continuity")
    want = run["obs"].copy()
    want[..., MAP:] = want[..., MAP:].astype(np.float16).astype(np.float32)
    for b, chunk, last_known in zip((0, 1, 3), chunks, (True, False, False)):
        steps = slice(b * 10, (b + 1) * 10)
        np.testing.assert_array_equal(chunk.time_major("obs"), want[steps])
        known = chunk.time_major("next_obs_known")
        expect = ~run["done"][steps]
        expect[-1] &= last_known
        np.testing.assert_array_equal(known, expect)
        nxt = chunk.time_major("next_obs")
        np.testing.assert_array_equal(nxt[known], want[b * 10 + 1:(b + 1) * 10 + 1][known])
        assert not nxt[~known].any()


def test_num_envs_the_data_cannot_confirm_is_used_and_said_unchecked(tmp_path, capsys):
    """Observations drawn independently (no map view continues at any E) and no next_obs: --num-envs is required,
    used as given, recorded as unchecked and said so in one line."""
    run = legacy_run(np.random.default_rng(9), steps=20, envs=3)
    write_legacy(tmp_path / "src", run, (0, 1), 10, compact=True, pickled=False)
    with pytest.raises(DataFileError, match="next_obs: missing.*nor from the map views: pass --num-envs"):
        import_trajectories(ImportConfig(str(tmp_path / "src"), str(tmp_path / "dst"), progress=False))
    assert main(["import", str(tmp_path / "src"), str(tmp_path / "dst"), "--num-envs", "1", "--no-progress"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "unchecked" in line]
    assert len(lines) == 1 and lines[0].startswith("environments: 1, --num-envs, unchecked: nothing in the data can "
                                                   "confirm it (no next_obs; the map views continue at no E)")
    meta = read_chunk(list_chunks(tmp_path / "dst")[0]).meta
    assert meta.extra["import"]["num_envs_source"].startswith("--num-envs, unchecked")


def test_a_file_of_another_run_is_refused_by_its_map_views(tmp_path):
    """Each file is checked: a later file whose rows continue at another E than the first file's is refused, naming
    it (its chunk is never written)."""
    three = legacy_run(np.random.default_rng(10), steps=20, envs=3, walk=True)
    two = legacy_run(np.random.default_rng(11), steps=30, envs=2, walk=True)
    write_legacy(tmp_path / "src", three, (0,), 10, compact=True, pickled=False)
    write_legacy(tmp_path / "other", two, (1,), 15, compact=True, pickled=False)  # 30 rows, as batch 0's
    (tmp_path / "other" / "trajectories_batch_000001.npz").rename(tmp_path / "src" / "trajectories_batch_000001.npz")
    with pytest.raises(DataFileError, match=r"trajectories_batch_000001.npz: obs: contradicts --num-envs 3: .*"
                                            r"interleave 2 environments"):
        import_trajectories(ImportConfig(str(tmp_path / "src"), str(tmp_path / "dst"), progress=False))
    assert [p.name for p in list_chunks(tmp_path / "dst")] == ["chunk_000000.npz"]


def test_map_continuity_tells_rows_of_one_env_from_rows_of_others():
    """Rows E apart continue each other at the true E, never at a smaller one; rows after a done
    (a new episode elsewhere) are left out; views drawn independently continue at no E."""
    from hsrl.data.importer import _block_grids, map_continuity, num_envs_from_maps
    from hsrl.env.catalog import env_info

    info = env_info(CLASSIC)
    run = legacy_run(np.random.default_rng(12), steps=30, envs=4, walk=True, p_done=0.2)
    obs, done = run["obs"][:30].reshape(120, -1), run["done"].reshape(-1)
    grids = _block_grids(obs, info)
    found, tried = num_envs_from_maps(grids, done)
    assert found == 4 and [e for e, (share, _) in tried.items() if share > 0.5] == [4]
    assert map_continuity(grids, done, 4)[0] == 1.0
    assert map_continuity(grids, np.zeros_like(done), 4)[0] < 1.0  # done rows continue into another world
    flat = legacy_run(np.random.default_rng(12), steps=30, envs=4)
    assert num_envs_from_maps(_block_grids(flat["obs"][:30].reshape(120, -1), info), done)[0] is None


def test_bits_packed_in_another_order_are_refused(tmp_path):
    run = legacy_run(np.random.default_rng(3), steps=4, envs=2)
    write_legacy(tmp_path / "src", run, (0,), 4, compact=True, pickled=False)
    path = tmp_path / "src" / "trajectories_batch_000000.npz"
    data = dict(np.load(path))
    obs = run["obs"][:4].reshape(8, -1)
    data["obs_map_bits"] = np.packbits(obs[:, :MAP].astype(np.uint8), axis=1, bitorder="big")
    np.savez_compressed(path, **data)
    with pytest.raises(InputError, match="obs_map_bits: .*(padding bits|does not decode)"):
        import_trajectories(ImportConfig(str(tmp_path / "src"), str(tmp_path / "dst"), num_envs=2, progress=False))


def test_float_pixels_become_uint8(tmp_path):
    run = legacy_run(np.random.default_rng(4), steps=6, envs=2, pixels=True)
    write_legacy(tmp_path / "src", run, (0, 1, 2), 2, per_token=False, pickled=False)
    with pytest.raises(InputError, match=r"obs: rows of shape \(63, 63, 3\).*pass --env Craftax-Classic-Pixels-v1"):
        import_trajectories(ImportConfig(str(tmp_path / "src"), str(tmp_path / "dst"), progress=False))
    summary = import_trajectories(ImportConfig(str(tmp_path / "src"), str(tmp_path / "dst"), env=PIXELS,
                                               progress=False))
    assert summary.num_envs == 2 and summary.per_token is False
    chunks = [read_chunk(p) for p in list_chunks(tmp_path / "dst")]
    obs = np.concatenate([c["obs"] for c in chunks])
    assert obs.dtype == np.uint8 and chunks[0].meta.obs_kind == "pixels"
    np.testing.assert_array_equal(obs, np.rint(run["obs"][:6].reshape(-1, 63, 63, 3) * 255))
    assert chunks[0]["hidden_state"].shape == (4, 16)


def test_num_envs_is_read_from_next_obs_and_checked():
    rng = np.random.default_rng(5)
    run = legacy_run(rng, steps=5, envs=4)
    obs, nxt = run["obs"][:5].reshape(20, -1), run["obs"][1:6].reshape(20, -1)
    assert infer_num_envs(obs, nxt, run["done"].reshape(-1)) == 4
    assert infer_num_envs(obs, rng.permutation(nxt), np.zeros(20, bool)) is None


def test_wrong_num_envs_and_bad_values_name_the_file_field_and_row(tmp_path):
    run = legacy_run(np.random.default_rng(6), steps=6, envs=4)
    write_legacy(tmp_path / "src", run, (0, 1), 3, pickled=False)
    with pytest.raises(InputError, match="next_obs: row .* not time-major over 2 environments"):
        import_trajectories(ImportConfig(str(tmp_path / "src"), str(tmp_path / "a"), num_envs=2, progress=False))
    path = tmp_path / "src" / "trajectories_batch_000001.npz"
    data = dict(np.load(path))
    data["action"][5] = 2.5
    np.savez_compressed(path, **data)
    with pytest.raises(InputError, match="trajectories_batch_000001.npz: action: row 5 holds 2.5, not a whole"):
        import_trajectories(ImportConfig(str(tmp_path / "src"), str(tmp_path / "b"), progress=False))
    data["action"][5] = 2
    data["done"][7] = 3
    np.savez_compressed(path, **data)
    with pytest.raises(InputError, match="trajectories_batch_000001.npz: done: row 7 holds 3"):
        import_trajectories(ImportConfig(str(tmp_path / "src"), str(tmp_path / "c"), progress=False))
    data["done"][7] = 0
    data["hidden_state"][2, 0] = 0  # a zero vector before nonzero ones: not padding
    data["hidden_state"][2, 1] = 1
    np.savez_compressed(path, **data)
    with pytest.raises(InputError, match="hidden_state: row 2: position 0 is a zero vector"):
        import_trajectories(ImportConfig(str(tmp_path / "src"), str(tmp_path / "d"), progress=False))


def test_a_rerun_resumes_and_a_foreign_folder_is_refused(imported, tmp_path):
    root, run, _ = imported
    write_legacy(tmp_path / "src", run, (0, 1, 2), BATCH_STEPS, pickled=False)
    dst = tmp_path / "dst"
    config = ImportConfig(str(tmp_path / "src"), str(dst), progress=False)
    import_trajectories(config)
    first = {p.name: p.stat().st_mtime_ns for p in list_chunks(dst)}
    list_chunks(dst)[-1].unlink()  # as if killed before the last file
    (dst / ".chunk_000002.npz.abc.tmp").write_bytes(b"half")
    again = import_trajectories(config)
    assert again.written == 1 and again.skipped == 2 and not list(dst.glob(".*.tmp"))
    assert {p.name: p.stat().st_mtime_ns for p in list_chunks(dst)[:2]} == {k: first[k] for k in list(first)[:2]}
    # another --num-envs: refused, nothing touched
    with pytest.raises(InputError, match="chunk_000000.npz: imported with other settings.*num_envs"):
        import_trajectories(ImportConfig(str(tmp_path / "src"), str(dst), num_envs=2, progress=False))
    # a new file after the last one changes what the last chunk's next_obs can know: refused, naming it
    write_legacy(tmp_path / "src", run, (3,), BATCH_STEPS, pickled=False)
    with pytest.raises(InputError, match="chunk_000002.npz: .*continues_into"):
        import_trajectories(config)
    # hsrl's own chunks are never written over
    from data_helpers import make_dataset

    (tmp_path / "own").mkdir()
    make_dataset(tmp_path / "own", np.random.default_rng(0), files=1)
    with pytest.raises(InputError, match="not made by `hsrl import`"):
        import_trajectories(ImportConfig(str(tmp_path / "src"), str(tmp_path / "own"), progress=False))


def test_cli_imports_and_says_what_it_did(tmp_path, capsys):
    run = legacy_run(np.random.default_rng(7), steps=6, envs=2)
    write_legacy(tmp_path / "src", run, (0, 2), 2)
    assert main(["import", str(tmp_path / "src"), str(tmp_path / "dst"), "--trust-pickle", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "2 chunks (2 written" in out and "2 segments" in out and "foreign" in out and "hsrl returns" in out
    meta = json.loads(str(np.load(list_chunks(tmp_path / "dst")[1])["meta"]))
    assert meta["segment"] == 1 and meta["first_step"] is None


def test_segments_in_the_chunk_format():
    """`segment` is stored only where a recording has gaps, validated, and never goes back; within a segment
    first_steps must still follow on."""
    from hsrl.data import ChunkInfo, ChunkMeta
    from hsrl.data.chunks import check_consecutive, starts_segment

    plain = ChunkMeta(env_name=CLASSIC, num_envs=2, obs_kind="symbolic", first_step=0)
    assert "segment" not in json.loads(plain.to_json())  # data without gaps is stored as before
    later = ChunkMeta(env_name=CLASSIC, num_envs=2, obs_kind="symbolic", segment=2)
    assert ChunkMeta.from_json(later.to_json()) == later and json.loads(later.to_json())["segment"] == 2
    with pytest.raises(ValueError, match="segment must be a non-negative int"):
        ChunkMeta(env_name=CLASSIC, num_envs=2, obs_kind="symbolic", segment=-1)

    def info(name, segment, first_step):
        meta = ChunkMeta(env_name=CLASSIC, num_envs=2, obs_kind="symbolic", first_step=first_step, segment=segment)
        return ChunkInfo(Path(name), meta, {}, 8)

    ok = [info("a", 0, 0), info("b", 0, 4), info("c", 1, 40), info("d", 1, 44)]
    check_consecutive(ok)
    assert starts_segment(ok) == [True, False, True, False]
    with pytest.raises(DataFileError, match="d: meta: first_step 50 does not follow"):
        check_consecutive(ok[:3] + [info("d", 1, 50)])
    with pytest.raises(DataFileError, match="c: meta: segment 0 comes after segment 1"):
        check_consecutive([info("b", 1, 0), info("c", 0, 4)])


def _import_small(tmp_path, rng_seed=8, text=True):
    """A small compact import (2 files of 2 steps x 2 envs), with or without the other tool's text_obs."""
    run = legacy_run(np.random.default_rng(rng_seed), steps=4, envs=2)
    write_legacy(tmp_path / "src", run, (0, 1), 2, compact=True, pickled=False)
    if not text:
        for path in (tmp_path / "src").iterdir():
            data = dict(np.load(path))
            del data["text_obs"]
            np.savez_compressed(path, **data)
    import_trajectories(ImportConfig(str(tmp_path / "src"), str(tmp_path / "dst"), num_envs=2, progress=False))
    return tmp_path / "dst"


def test_labelling_imported_data_says_which_text_the_model_reads(tmp_path, capsys):
    """By default hsrl.text renders the imported observations (as online, serve and eval will), and `hsrl label` says
    so in one line; --text-from import labels the other tool's text_obs as it was, recorded in the spec, and `hsrl
    prompt` shows that text."""
    from hsrl.llm import ExtractionSpec, make_extractor
    from hsrl.text import render_text

    dst = _import_small(tmp_path)
    imported = np.concatenate([read_chunk(p)["text_obs"] for p in list_chunks(dst)])
    assert imported[3] == "batch 0 row 3: Map: tree"
    assert main(["label", str(dst), str(tmp_path / "hsrl"), "--batch-size", "8", "--no-progress"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("text: ")]
    assert len(lines) == 1 and lines[0].startswith("text: hsrl.text renders the observations (renderer version")
    assert "the imported text_obs (the other tool's rendering) is not read: --text-from import" in lines[0]
    own = [read_chunk(p) for p in list_chunks(tmp_path / "hsrl")]
    obs = np.concatenate([c["obs"] for c in own])
    np.testing.assert_array_equal(np.concatenate([c["text_obs"] for c in own]), render_text(obs, "classic"))
    assert "text_source" not in json.loads(own[0].meta.spec_json)  # the default: specs and hashes as before
    assert own[0].meta.extra["import"]["text_obs"].startswith("rendered by hsrl.text")

    assert main(["label", str(dst), str(tmp_path / "import"), "--text-from", "import", "--batch-size", "8",
                 "--no-progress"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("text: ")]
    assert lines == ["text: the imported text_obs, as the other tool rendered it (--text-from import; the spec "
                     "records text_source 'import', so online, serve and eval cannot compute these states)"]
    theirs = [read_chunk(p) for p in list_chunks(tmp_path / "import")]
    spec = ExtractionSpec.from_json(theirs[0].meta.spec_json)
    assert spec.text_source == "import" and json.loads(theirs[0].meta.spec_json)["text_source"] == "import"
    np.testing.assert_array_equal(np.concatenate([c["text_obs"] for c in theirs]), imported)
    # the states are the model's states of the imported text, not of hsrl.text's rendering
    states = np.concatenate([c["hidden_state"] for c in theirs])
    extractor = make_extractor(spec.replace(text_source="hsrl"), device="cpu")
    np.testing.assert_allclose(states, extractor.extract(list(imported)).hidden_state, rtol=1e-4, atol=1e-4)
    assert not np.allclose(states, np.concatenate([c["hidden_state"] for c in own]), atol=1e-3)
    # `hsrl prompt` shows the text the model read: the imported one with --text-from import, or a labelled file's
    for args in (["prompt", str(dst), "--row", "3", "--text-from", "import"], ["prompt", str(tmp_path / "import"),
                                                                                "--row", "3"]):
        assert main(args) == 0
        assert "batch 0 row 3: Map: tree" in capsys.readouterr().out
    assert main(["prompt", str(dst), "--row", "3"]) == 0
    shown = capsys.readouterr().out
    assert "batch 0 row 3" not in shown and render_text(obs[3:4], "classic")[0].splitlines()[1] in shown


def test_text_from_import_is_refused_without_imported_text(tmp_path, capsys):
    dst = _import_small(tmp_path, text=False)
    assert main(["label", str(dst), str(tmp_path / "out"), "--text-from", "import", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "chunk_000000.npz: --text-from import labels the text_obs `hsrl import` kept" in err
    assert "its source held no text_obs" in err and not (tmp_path / "out").exists()
    from data_helpers import make_dataset

    (tmp_path / "own").mkdir()
    make_dataset(tmp_path / "own", np.random.default_rng(0), files=1)
    assert main(["label", str(tmp_path / "own"), str(tmp_path / "out"), "--text-from", "import"]) == 2
    assert "it was not made by `hsrl import`" in capsys.readouterr().err
    # imported data without text_obs: the line, without the hint
    assert main(["label", str(dst), str(tmp_path / "plain"), "--batch-size", "8", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "text: hsrl.text renders the observations" in out and "--text-from import" not in out


def test_live_consumers_refuse_a_spec_of_imported_text(tmp_path):
    """Online, serve and eval compute states from hsrl.text's rendering: a spec whose text came from the imported
    files is refused with one line saying why: eval's spec (the checkpoint's or --spec), the live states of online and
    eval, the server, an online warm start's checkpoint (not overridable) and an offline experiment without
    --eval-data. The field is left out of a default spec's JSON, so specs and hashes made before it stay the same."""
    from hsrl.evaluate import EvalConfig
    from hsrl.llm import ExtractionSpec
    from hsrl.llm.spec import spec_differences
    from hsrl.rl.checkpoint import CheckpointError, check_compatible
    from hsrl.rl.live import LiveHidden

    spec = ExtractionSpec(model="minilm", variant="classic")
    theirs = spec.replace(text_source="import")
    assert spec_differences(spec, theirs) == ["text_source"] and "text_source" not in spec.to_json()
    assert ExtractionSpec.from_json(theirs.to_json()) == theirs
    with pytest.raises(ValueError, match="text_source='import'; input 'image' reads no text"):
        ExtractionSpec(model="minilm", input="image", text_source="import")
    why = "text_source 'import': its states were computed from the text_obs another tool wrote.*exists only in"
    config = EvalConfig(str(tmp_path / "run"))
    with pytest.raises(InputError, match=f"run: extraction spec with {why}"):
        config.live_spec_json(theirs.to_json(), tmp_path / "run")
    with pytest.raises(InputError, match=f"--spec: extraction spec with {why}"):
        EvalConfig(str(tmp_path / "run"), spec=theirs.to_json()).live_spec_json(None, tmp_path / "run")
    assert config.live_spec_json(spec.to_json(), tmp_path / "run") == spec.to_json()

    class Source:
        spec_json, hidden_size = theirs.to_json(), 8

    with pytest.raises(InputError, match=f"live hidden states: extraction spec with {why}"):
        LiveHidden("classic", None, Source())
    from hsrl.serve.server import Endpoint, ServerSettings

    with pytest.raises(InputError, match=f"the server: extraction spec with {why}"):
        Endpoint(theirs, ServerSettings())
    Endpoint(spec, ServerSettings())
    meta = {"path": "ckpt", "env_name": CLASSIC, "spec_json": theirs.to_json(),
            "network": {"kind": "mlp", "num_actions": 17, "obs_shape": [MAP + AUX], "hidden_size": 8}}
    with pytest.raises(CheckpointError, match=r"ckpt was trained on hidden states of imported text .*this online run "
                                              r"has states of hsrl.text's rendering \(not overridable\)"):
        check_compatible(meta, spec_json=spec.to_json(), allow_spec_mismatch=True, what="this online run")
    # an offline experiment would evaluate its arms live: refused before any arm trains, unless --eval-data
    from data_helpers import make_dataset
    from hsrl.experiment.config import check_experiment_data

    rng = np.random.default_rng(13)
    (tmp_path / "data").mkdir()
    make_dataset(tmp_path / "data", rng, files=1, spec=theirs.to_json(),
                 hidden=lambda n: rng.standard_normal((n, 8)).astype(np.float32))
    assert main(["returns", str(tmp_path / "data"), "--no-progress"]) == 0
    with pytest.raises(InputError, match=f"chunk_000000.npz: meta: extraction spec with {why}.*or give --eval-data"):
        check_experiment_data(str(tmp_path / "data"), None)
