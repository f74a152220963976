"""Hindsight labels (`hsrl label --future K`): each prompt shows the next K observations of its environment's episode in
the data, never past an episode's end, a gap in the recording or the data's end (checked against a plain walk);
labelling, re-extraction and the extractor called directly give the same state; the live verbs refuse such a spec;
and a policy trained on hindsight states of data whose next observation tells the action taken reads the future."""

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from hsrl.data import ChunkMeta, add_returns, chunk_path, list_chunks, read_chunk, write_chunk
from hsrl.data.chunks import episode_remaining, segment_start_rows
from hsrl.data.label import chunk_future, row_future
from hsrl.errors import InputError
from hsrl.llm.prompt import Future, future_text, prompt_program
from hsrl.llm.spec import ExtractionSpec, check_live_text

sys.path.insert(0, str(Path(__file__).parent))

ENV = "Craftax-Classic-Symbolic-v1"
OBS_DIM = 1345
FUTURE_TEMPLATE = "Now: {observation}\n{future}What happens next?"  # short enough for MiniLM's context


def _spec(k, **kw):
    return ExtractionSpec(model="minilm", template="custom", template_text=FUTURE_TEMPLATE, future=k, **kw)


# ---- the brute force: each environment, one step at a time ----------------------------------------------------------


def _future_walk(texts, actions, done, num_envs, k, seg_start):
    """Per row (time-major), by plain loops: the Future a hindsight prompt must show."""
    T = len(done) // num_envs
    t_of = lambda t, e: t * num_envs + e  # noqa: E731
    out = []
    for t in range(T):
        for e in range(num_envs):
            entries, ended, n = [], False, 0
            while True:
                if done[t_of(t + n, e)]:  # the episode's last step
                    ended = True
                    break
                if n == k or t + n + 1 >= T or seg_start[t_of(t + n + 1, e)]:  # enough, the data's end, a gap
                    break
                n += 1
                entries.append((str(texts[t_of(t + n, e)]), int(actions[t_of(t + n, e)])))
            out.append(Future(tuple(entries), ended))
    return out


def _write_run(folder, rng, num_envs, files, p_done):
    """Chunks of random lengths with random done masks, some starting a new segment (a gap); text_obs names each
    row's (step, env) so a prompt's observations can be read back."""
    folder.mkdir(parents=True, exist_ok=True)
    segment, step = 0, 0
    for i in range(files):
        steps = int(rng.integers(1, 6))
        if i and rng.random() < 0.3:
            segment, step = segment + 1, step + int(rng.integers(1, 50))  # a gap in the recording
        n = steps * num_envs
        rows = np.arange(n)
        arrays = {"obs": np.zeros((n, OBS_DIM), np.float32), "next_obs": np.zeros((n, OBS_DIM), np.float32),
                  "action": rng.integers(0, 17, n), "reward": np.zeros(n, np.float32),
                  "done": rng.random(n) < p_done,
                  "text_obs": np.array([f"<s{step + r // num_envs}e{r % num_envs}>" for r in rows])}
        write_chunk(chunk_path(folder, i), arrays, ChunkMeta(env_name=ENV, num_envs=num_envs, obs_kind="symbolic",
                                                             first_step=step, segment=segment))
        step += steps


@pytest.mark.parametrize("seed", range(6))
def test_future_window_matches_a_plain_walk(tmp_path, seed):
    """For random done masks, gaps, env counts, chunk lengths and K: every row's future (read across chunk files)
    is exactly the next K observations of its environment before the episode's end, a gap or the data's end."""
    from hsrl.data import inspect_chunk

    rng = np.random.default_rng(seed)
    num_envs, k = int(rng.integers(1, 5)), int(rng.choice([1, 2, 3, 7]))
    _write_run(tmp_path, rng, num_envs, files=int(rng.integers(2, 7)), p_done=float(rng.choice([0.0, 0.1, 0.4])))
    paths = list_chunks(tmp_path)
    chunks = [read_chunk(p) for p in paths]
    texts = np.concatenate([c["text_obs"] for c in chunks])
    actions = np.concatenate([c["action"] for c in chunks])
    done = np.concatenate([c["done"] for c in chunks])
    seg_start = segment_start_rows([inspect_chunk(p) for p in paths])
    expected = _future_walk(texts, actions, done, num_envs, k, seg_start)
    # over the whole data at once (the segment starts given) and file by file (the later files read as labelling does)
    assert row_future(texts, actions, done, num_envs, k, segment_start=seg_start) == expected
    got = [f for c in chunks for f in chunk_future(c, c["text_obs"], k)[0]]
    assert got == expected
    # the prompt holds exactly those observations, in order, and says why there are fewer than K
    program = prompt_program(_spec(k))
    for row, future in enumerate(expected):
        slot = program.sample_text(str(texts[row]), (), future)
        shown = re.findall(r"<s\d+e\d+>", slot.split("\n", 1)[1])
        assert shown == [text for text, _ in future.entries]
        assert all(f"<s{int(text[2:].split('e')[0])}e{row % num_envs}>" == text for text, _ in future.entries)
        if len(future.entries) < k:
            assert ("the episode ends" in slot) == future.ended
            assert ("the data stops" in slot) == (not future.ended)
    remaining = episode_remaining(done, num_envs, seg_start).reshape(-1)
    assert [min(int(r), k) for r in remaining] == [len(f.entries) for f in expected]


def test_future_text_states_counts_and_reasons():
    names = [f"a{i}" for i in range(17)]
    assert future_text(None, 0, names) == ""
    assert "none (the episode ends with the current step)" in future_text(Future((), True), 3, names)
    assert "none (the data stops at the current step" in future_text(Future((), False), 3, names)
    block = future_text(Future((("X", 1), ("Y", 2)), False), 2, names)
    assert "(2 of the next 2 steps):" in block and block.index("X") < block.index("Y")
    assert "1 step later:\nX\nAction taken: a1" in block and block.endswith("\n\n")
    assert "1 of the next 3 steps; the episode ends with the last of them" in future_text(
        Future((("X", 1),), True), 3, names)
    with pytest.raises(ValueError, match="at most 1"):
        future_text(Future((("X", 1), ("Y", 2)), False), 1, names)


# ---- the spec ---------------------------------------------------------------------------------------------------------


def test_the_spec_records_future_and_keeps_older_hashes():
    plain = ExtractionSpec(model="minilm")
    assert "future" not in plain.to_dict() and plain.hash == ExtractionSpec.from_json(plain.to_json()).hash
    hind = ExtractionSpec(template="hindsight", future=4)
    assert hind.to_dict()["future"] == 4 and hind.hindsight and "{future}" in hind.template_text
    assert ExtractionSpec.from_json(hind.to_json()) == hind
    with pytest.raises(ValueError, match="future=0; template 'hindsight'"):
        ExtractionSpec(template="hindsight")
    with pytest.raises(ValueError, match="no \\{future\\} placeholder"):
        ExtractionSpec(template="forecast", future=2)
    with pytest.raises(ValueError, match="not template 'chat'"):
        ExtractionSpec(template="chat", future=2)
    with pytest.raises(ValueError, match="holds \\{future\\}.*--future K"):
        ExtractionSpec(template="custom", template_text=FUTURE_TEMPLATE)


# ---- the live verbs refuse ------------------------------------------------------------------------------------------


def test_online_serve_and_eval_refuse_a_hindsight_spec(tmp_path, capsys):
    from rl_helpers import write_hidden_task

    from hsrl.cli import main
    from hsrl.evaluate import EvalConfig
    from hsrl.rl.awr import TrainAWRConfig
    from hsrl.rl.awr_seeds import train_awr
    from hsrl.rl.live import LiveHidden
    from hsrl.serve.server import Endpoint, ServeConfig

    spec = _spec(2)
    why = "the future is not known while playing"
    with pytest.raises(InputError, match=f"future 2 \\(hindsight\\).*{why}"):
        check_live_text(spec.to_json(), "here")

    class Source:
        spec_json, hidden_size = spec.to_json(), 384

    with pytest.raises(InputError, match=why):
        LiveHidden("classic", None, Source())
    config = ServeConfig()
    with pytest.raises(InputError, match=why):
        Endpoint(spec, config.settings(None))
    for verb in (["serve"], ["online", "--steps", "8"]):
        assert main([*verb, "--template", "hindsight", "--out", str(tmp_path / "x")] if verb[0] == "online"
                    else [*verb, "--template", "hindsight"]) == 2
        err = capsys.readouterr().err
        assert "--template hindsight" in err and why in err and len(err.strip().splitlines()) == 1
    (tmp_path / "t.txt").write_text(FUTURE_TEMPLATE)
    assert main(["serve", "--prompt-template", str(tmp_path / "t.txt")]) == 2
    assert why in capsys.readouterr().err
    # a policy trained on hindsight states: eval refuses before any work, saying why and what to do instead
    data = write_hidden_task(tmp_path / "data", np.random.default_rng(0), files=1, rows_per_file=64,
                             spec=spec.to_json(), hidden_size=384)
    run = tmp_path / "run"
    train_awr(TrainAWRConfig(str(data), out=str(run), steps=4, batch_size=16, width=16, log_every=2, save_every=4,
                             progress=False, tensorboard=False))
    with pytest.raises(InputError, match=f"{why}.*--states-from SPEC --cross-source"):
        EvalConfig(str(run)).check()
    assert main(["eval", str(run), "--out", str(tmp_path / "eval")]) == 2 and not (tmp_path / "eval").exists()


# ---- labelling: the same state in label, in re-extraction and from the extractor ---------------------------------------


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(7)
    _write_run(folder, rng, num_envs=2, files=3, p_done=0.2)
    return folder


def test_label_equals_reextraction_and_the_extractor(small_run, tmp_path, capsys):
    from hsrl.cli import main
    from hsrl.data.label import ExtractConfig, LabelConfig, extract_dataset, label_dataset
    from hsrl.llm import make_extractor

    (tmp_path / "t.txt").write_text(FUTURE_TEMPLATE)
    out = tmp_path / "labelled"
    summary = label_dataset(LabelConfig(str(small_run), str(out), prompt_template=str(tmp_path / "t.txt"), future=2,
                                        batch_size=4, progress=False))
    assert summary.failed == {} and len(summary.labelled) == 3
    again = tmp_path / "again"
    assert extract_dataset(ExtractConfig(str(out), str(again), batch_size=5, progress=False)).failed == {}
    chunks = [read_chunk(p) for p in list_chunks(out)]
    spec = ExtractionSpec.from_json(chunks[0].meta.spec_json)
    assert spec.future == 2 and spec.template == "custom"
    from hsrl.data import inspect_chunk

    paths = list_chunks(small_run)
    texts = np.concatenate([c["text_obs"] for c in chunks])
    done = np.concatenate([c["done"] for c in chunks])
    actions = np.concatenate([c["action"] for c in chunks])
    future = _future_walk(texts, actions, done, 2, 2, segment_start_rows([inspect_chunk(p) for p in paths]))
    direct = make_extractor(spec).extract(list(texts), future=future).hidden_state
    labelled = np.concatenate([c["hidden_state"] for c in chunks])
    reextracted = np.concatenate([read_chunk(p)["hidden_state"] for p in list_chunks(again)])
    np.testing.assert_allclose(labelled, direct, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(reextracted, labelled, rtol=1e-4, atol=1e-5)
    # the future changes the state: the same observations without it give others
    none = make_extractor(spec).extract(list(texts)).hidden_state
    changed = np.array([len(f.entries) > 0 for f in future])
    assert changed.any() and not np.allclose(none[changed], labelled[changed], atol=1e-3)
    # `hsrl prompt` shows a labelled row's prompt with its future, as labelling built it
    row = int(np.flatnonzero([len(f.entries) == 2 for f in future])[0])
    start = 0
    for path in list_chunks(out):
        n = read_chunk(path, ["action"]).num_rows
        if row < start + n:
            break
        start += n
    assert main(["prompt", str(path), "--row", str(row - start)]) == 0
    shown = capsys.readouterr().out
    assert "future 2 (hindsight)" in shown and "2 of up to 2 next observations" in shown
    assert all(text in shown for text, _ in future[row].entries)


# ---- end to end: a hindsight-labelled policy reads the future ---------------------------------------------------------


WORDS = ("apple", "river", "stone", "cloud")  # the word each of the first four actions leaves in the next observation


def _readable_future(folder, rng, steps, num_envs=8, seed_shift=0):
    """Rows whose behaviour action (uniform over the first four) is named only by the next observation's text: the
    current one names the action before, which is independent of it. Observations carry nothing; rewards are 0, so
    AWR imitates the behaviour, which only a policy that sees the next observation can predict."""
    folder.mkdir(parents=True, exist_ok=True)
    n = steps * num_envs
    action = rng.integers(0, 4, n)
    done = rng.random(n) < 1 / 40
    before = np.concatenate([rng.integers(0, 4, num_envs), action[:-num_envs]])  # the action before each row
    text = np.array([f"The {WORDS[a]} glows." for a in before])
    arrays = {"obs": np.zeros((n, OBS_DIM), np.float32), "next_obs": np.zeros((n, OBS_DIM), np.float32),
              "action": action, "reward": np.zeros(n, np.float32), "done": done, "text_obs": text}
    write_chunk(chunk_path(folder, 0), arrays, ChunkMeta(env_name=ENV, num_envs=num_envs, obs_kind="symbolic",
                                                         first_step=0))
    return folder


@pytest.mark.slow
def test_a_hindsight_labelled_policy_reads_the_future(tmp_path):
    """AWR on hindsight labels (the next observation in the prompt) predicts held-out behaviour actions that neither
    the baseline (no hidden state) nor a policy on the current observation's state (a forecast's input) can."""
    from hsrl.data.label import LabelConfig, label_dataset
    from hsrl.experiment.offline import evaluate_offline
    from hsrl.rl.awr import TrainAWRConfig
    from hsrl.rl.awr_seeds import train_awr

    rng = np.random.default_rng(0)
    raw = {"train": _readable_future(tmp_path / "raw-train", rng, 256), "held": _readable_future(tmp_path / "raw-held",
                                                                                                 rng, 64)}
    (tmp_path / "hindsight.txt").write_text(FUTURE_TEMPLATE)
    (tmp_path / "now.txt").write_text("Now: {observation}\nWhat happens next?")
    arms = {"hindsight": dict(prompt_template=str(tmp_path / "hindsight.txt"), future=1),
            "now": dict(prompt_template=str(tmp_path / "now.txt"))}
    scores = {}
    for arm, flags in arms.items():
        for part, src in raw.items():
            summary = label_dataset(LabelConfig(str(src), str(tmp_path / f"{arm}-{part}"), batch_size=256,
                                                progress=False, **flags))
            assert summary.failed == {}
        add_returns(tmp_path / f"{arm}-train", 0.9, show_progress=False)
        add_returns(tmp_path / f"{arm}-held", 0.9, show_progress=False)
        train_awr(TrainAWRConfig(str(tmp_path / f"{arm}-train"), out=str(tmp_path / f"run-{arm}"), steps=600,
                                 batch_size=128, width=64, lr=1e-3, log_every=300, save_every=600, progress=False,
                                 tensorboard=False))
        scores[arm] = evaluate_offline(tmp_path / f"run-{arm}", tmp_path / f"{arm}-held", ("real", "shuffled"))
    train_awr(TrainAWRConfig(str(tmp_path / "now-train"), out=str(tmp_path / "run-base"), hidden=False, steps=300,
                             batch_size=128, width=64, log_every=300, save_every=300, progress=False,
                             tensorboard=False))
    scores["baseline"] = evaluate_offline(tmp_path / "run-base", tmp_path / "now-held", ("real",))
    match = {arm: s["real"]["action_match"] for arm, s in scores.items()}
    print(json.dumps({arm: {k: v["action_match"] for k, v in s.items()} for arm, s in scores.items()}))
    assert match["hindsight"] > 0.8  # the next observation names the action (but at episode ends)
    assert match["now"] < 0.4 and match["baseline"] < 0.4  # chance: 1/4
    assert scores["hindsight"]["shuffled"]["action_match"] < 0.4  # it reads the state, not a habit
