"""Text ablations (`--ablation text:FILE`): each line of FILE is its own ablation, labelled `text:FILE:LINE`, whose
state is the line put in the observation's place by the same prompt program and model as the real states; in
`hsrl eval` (live) and in offline evaluation alike."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from experiment_helpers import write_expert_rows  # noqa: E402
from rl_helpers import respec, write_hidden_task  # noqa: E402

from hsrl.errors import InputError  # noqa: E402
from hsrl.evaluate import AblatedHidden, parse_ablations  # noqa: E402
from hsrl.llm.spec import ExtractionSpec  # noqa: E402

SPEC = ExtractionSpec(model="minilm")
LINES = ["You are in a Craftax world. Nothing is known about your surroundings.",
         "xq zvv plorth unk 7 gribble",
         "Seek death: walk into the lava and let the zombies find you."]


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return path


def test_a_three_line_file_is_three_ablations(text_file, tmp_path):
    asked = parse_ablations(f"real, text:{text_file},zero")
    assert list(asked) == ["real", f"text:{text_file}:1", f"text:{text_file}:2", f"text:{text_file}:3", "zero"]
    assert [asked[f"text:{text_file}:{i}"] for i in (1, 2, 3)] == LINES and asked["real"] is None
    assert parse_ablations(f"text:{text_file}:2") == {f"text:{text_file}:2": LINES[1]}  # one line, as runs get it
    gaps = tmp_path / "gaps.txt"
    gaps.write_text("first\n\n  \nfourth")  # blank lines are no ablation; labels keep the file's line numbers
    assert parse_ablations(f"text:{gaps}") == {f"text:{gaps}:1": "first", f"text:{gaps}:4": "fourth"}
    for bad, why in ((f"text:{tmp_path / 'none.txt'}", "no such file"), (f"text:{gaps}:2", "no text on line 2"),
                     ("real,nope", "'nope' is not an ablation"), (",", "expected")):
        with pytest.raises(InputError, match=why):
            parse_ablations(bad)
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(InputError, match="holds no text"):
        parse_ablations(f"text:{tmp_path / 'empty.txt'}")


def test_a_text_ablation_hands_its_state_to_every_environment():
    from hsrl.data.stats import HiddenStats

    class Live:
        reads_images, hidden_size = False, 3

    stats = HiddenStats(mean=np.zeros(3), std=np.ones(3), count=1)
    fn = AblatedHidden(Live(), "text:t.txt:2", stats, None, 0, {"text:t.txt:2": np.array([1.0, 2.0, 3.0])})
    np.testing.assert_array_equal(fn(np.zeros((4, 5)), np.ones(4, bool)), np.tile([1.0, 2.0, 3.0], (4, 1)))
    fn.ablation = "text:t.txt:3"
    with pytest.raises(ValueError, match="not one of"):
        fn(np.zeros((4, 5)), np.ones(4, bool))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A policy trained on states of MiniLM's width labelled by SPEC, and held-out rows of the same labelling."""
    from hsrl.rl.awr import TrainAWRConfig
    from hsrl.rl.awr_seeds import train_awr

    root = tmp_path_factory.mktemp("text")
    data = write_hidden_task(root / "data", np.random.default_rng(0), files=1, rows_per_file=64,
                             spec=SPEC.to_json(), hidden_size=384)
    held = write_expert_rows(root / "held", np.random.default_rng(1), per_action=2, hidden_size=384)
    respec(held, SPEC.to_json())
    train_awr(TrainAWRConfig(str(data), out=str(root / "run"), steps=4, batch_size=16, width=16, log_every=4,
                             save_every=4, progress=False, tensorboard=False))
    return root / "run", held


def test_offline_text_ablations_use_the_datas_prompt_program_and_model(run, text_file):
    """Offline: three rows for a three-line file; each text's state is the one the live path (`LiveHidden`, as
    `hsrl eval` computes it) and the extractor give for that text."""
    from hsrl.evaluate import text_ablation_states
    from hsrl.experiment.offline import evaluate_offline
    from hsrl.llm import make_extractor
    from hsrl.rl.live import ExtractorSource, LiveHidden

    policy_dir, held = run
    scores = evaluate_offline(policy_dir, held, ("real", f"text:{text_file}"))
    assert list(scores) == ["real"] + [f"text:{text_file}:{i}" for i in (1, 2, 3)]
    assert all(0 <= s["action_match"] <= 1 and s["rows"] == scores["real"]["rows"] for s in scores.values())
    texts = parse_ablations(f"text:{text_file}")
    offline = text_ablation_states(SPEC.to_json(), texts, "here")
    extractor = make_extractor(SPEC)
    live = LiveHidden("classic", None, ExtractorSource(extractor)).text_states(LINES)
    direct = extractor.extract(LINES).hidden_state
    for i, name in enumerate(texts):
        np.testing.assert_allclose(offline[name], live[i], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(offline[name], direct[i], rtol=1e-5, atol=1e-6)
    assert not np.allclose(direct[0], direct[2], atol=1e-3)  # different texts, different states
    with pytest.raises(InputError, match="have none"):
        text_ablation_states(None, texts, "foreign states")
    with pytest.raises(InputError, match="reads images"):
        text_ablation_states(ExtractionSpec(model="qwen3-vl-4b", input="image").to_json(), texts, "pixels")


def test_eval_gives_one_row_per_line(run, text_file, tmp_path):
    from hsrl.evaluate import EvalConfig, evaluate

    policy_dir, _ = run
    out = tmp_path / "eval"
    report = evaluate(EvalConfig(str(policy_dir), episodes=2, envs=2, max_episode_steps=8,
                                 ablation=f"real,text:{text_file}", out=str(out), progress=False))
    rows = report["results"]
    assert [r["ablation"] for r in rows] == ["real"] + [f"text:{text_file}:{i}" for i in (1, 2, 3)]
    assert [r.get("text") for r in rows] == [None] + LINES
    assert all(r["episodes"] == 2 and np.isfinite(r["return_mean"]) for r in rows)
    md = (out / "eval.md").read_text()
    assert f"| text:{text_file}:2 |" in md and f"- text:{text_file}:3: {LINES[2]!r}" in md
    assert json.loads((out / "eval.json").read_text())["results"] == rows
