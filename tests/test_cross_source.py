"""Cross-source evaluation: a policy evaluated with hidden states of another spec than it was trained on (a policy
trained on hindsight labels, whose states exist only in recorded data, evaluated with states a player can compute)
runs only with --cross-source, and its report names both sources and the fields in which their specs differ."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from experiment_helpers import write_expert_rows  # noqa: E402
from rl_helpers import SPEC, respec, write_hidden_task  # noqa: E402

from hsrl.errors import InputError  # noqa: E402
from hsrl.llm.spec import ExtractionSpec  # noqa: E402

HINDSIGHT = ExtractionSpec(model="minilm", template="custom", future=2,
                           template_text="Now: {observation}\n{future}What happens next?")
FORECAST = ExtractionSpec(model="minilm")  # what a player can compute: the observation alone


def _train(data, out, steps=4):
    from hsrl.rl.awr import TrainAWRConfig
    from hsrl.rl.awr_seeds import train_awr

    train_awr(TrainAWRConfig(str(data), out=str(out), steps=steps, batch_size=16, width=16, log_every=steps,
                             save_every=steps, progress=False, tensorboard=False))
    return out


def test_offline_evaluation_on_another_labelling_needs_cross_source(tmp_path):
    """Held-out rows labelled by another spec than the training rows: refused naming the fields, then evaluated with
    cross_source; `state_sources` names both specs and their difference."""
    from hsrl.evaluate import state_sources
    from hsrl.experiment.offline import evaluate_offline
    from hsrl.rl.checkpoint import CheckpointError

    hindsight = json.dumps({**json.loads(SPEC), "template": "hindsight", "future": 2})
    data = write_hidden_task(tmp_path / "train", np.random.default_rng(0), files=1, rows_per_file=256,
                             spec=hindsight)
    run = _train(data, tmp_path / "run")
    held = write_expert_rows(tmp_path / "held", np.random.default_rng(1), per_action=4)  # labelled by SPEC
    with pytest.raises(CheckpointError, match="fields that differ: future, template"):
        evaluate_offline(run, held, ("real", "shuffled"))
    scores = evaluate_offline(run, held, ("real", "shuffled"), cross_source=True)
    assert set(scores) == {"real", "shuffled"} and 0 <= scores["real"]["action_match"] <= 1
    sources = state_sources(hindsight, SPEC, "training", f"--eval-data {held}")
    assert sources["cross_source"] and sources["differ"] == ["future", "template"]
    assert "future: 2 != '<absent>'" in sources["detail"] and "template: 'hindsight' != '<absent>'" in sources["detail"]
    assert "future 2" in sources["trained"]["summary"] and "future" not in sources["evaluated"]["summary"]
    # the same labelling: no flag needed, and nothing to name
    respec(held, hindsight)
    assert evaluate_offline(run, held, ("real",))["real"]["rows"] == scores["real"]["rows"]
    assert not state_sources(hindsight, hindsight, "a", "b")["cross_source"]


def test_states_from_reads_json_a_file_or_a_labelled_dataset(tmp_path):
    from hsrl.evaluate import read_spec_json

    data = write_hidden_task(tmp_path / "data", np.random.default_rng(0), files=1, rows_per_file=16,
                             spec=FORECAST.to_json(), returns=False)
    (tmp_path / "spec.json").write_text(FORECAST.to_json(indent=2))
    for value in (FORECAST.to_json(), str(tmp_path / "spec.json"), str(data), str(data / "chunk_000000.npz")):
        assert read_spec_json(value, "--states-from") == FORECAST.to_json()
    with pytest.raises(InputError, match="neither JSON"):
        read_spec_json(str(tmp_path / "nope"), "--states-from")
    raw = write_hidden_task(tmp_path / "raw", np.random.default_rng(0), files=1, rows_per_file=16, spec=None,
                            returns=False)
    with pytest.raises(InputError, match="not labelled"):
        read_spec_json(str(raw), "--states-from")


@pytest.fixture(scope="module")
def hindsight_run(tmp_path_factory):
    """A policy trained on states of a hindsight spec (MiniLM's width), which no live verb can compute."""
    root = tmp_path_factory.mktemp("hindsight")
    data = write_hidden_task(root / "data", np.random.default_rng(0), files=1, rows_per_file=64,
                             spec=HINDSIGHT.to_json(), hidden_size=384)
    return _train(data, root / "run")


def test_eval_with_states_from_another_spec_needs_cross_source(hindsight_run, tmp_path, capsys):
    from hsrl.cli import main
    from hsrl.evaluate import EvalConfig

    forecast = FORECAST.to_json()
    with pytest.raises(InputError, match="future is not known while playing"):
        EvalConfig(str(hindsight_run)).check()
    with pytest.raises(InputError, match="future: 2 != '<absent>'.*cross-source evaluation: pass --cross-source"):
        EvalConfig(str(hindsight_run), states_from=forecast).check()
    with pytest.raises(InputError, match="--cross-source goes with --states-from"):
        EvalConfig(str(hindsight_run), cross_source=True).check()
    with pytest.raises(InputError, match="give one"):
        EvalConfig(str(hindsight_run), states_from=forecast, spec=forecast, cross_source=True).check()
    with pytest.raises(InputError, match="future is not known while playing"):  # states a player cannot compute
        EvalConfig(str(hindsight_run), states_from=HINDSIGHT.to_json(), cross_source=True).check()
    assert main(["eval", str(hindsight_run), "--states-from", forecast, "--out", str(tmp_path / "no")]) == 2
    assert "--cross-source" in capsys.readouterr().err and not (tmp_path / "no").exists()
    EvalConfig(str(hindsight_run), states_from=forecast, cross_source=True).check()


def test_cross_source_eval_runs_and_names_both_sources(hindsight_run, tmp_path):
    """The report names the states the policy was trained on and the ones it was evaluated with (as the model
    resolved them: what made the states), and the fields in which they differ."""
    from hsrl.evaluate import EvalConfig, evaluate
    from hsrl.llm import make_extractor

    out = tmp_path / "eval"
    report = evaluate(EvalConfig(str(hindsight_run), states_from=FORECAST.to_json(), cross_source=True, episodes=2,
                                 envs=2, max_episode_steps=8, ablation="real,zero", out=str(out), progress=False))
    assert [r["ablation"] for r in report["results"]] == ["real", "zero"]
    states = report["states"]
    assert states["cross_source"] and {"future", "template"} <= set(states["differ"])
    resolved = make_extractor(FORECAST).spec  # 'auto' fields as the model resolved them
    assert states["trained"]["spec_hash"] == HINDSIGHT.hash and states["evaluated"]["spec_hash"] == resolved.hash
    assert states["evaluated"]["from"] == "--states-from JSON" and str(hindsight_run) in states["trained"]["from"]
    text = (out / "eval.md").read_text()
    assert text.startswith("Cross-source evaluation: the policy was trained on states of spec " + HINDSIGHT.hash)
    assert f"evaluated with states of spec {resolved.hash}" in text and "future: 2 != '<absent>'" in text
    assert json.loads((out / "eval.json").read_text())["states"] == states
