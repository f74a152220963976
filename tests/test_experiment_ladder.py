"""`hsrl experiment` with an upper bound: a hindsight-labelled variant (its spec shows the future) laid out above the
forecast arm as the ladder's top rung, scored also with the forecast's states (--eval-source, a cross-source
evaluation), and the room left for a better forecaster; text ablations expand per line. AWR on the synthetic
hidden-state task: the "hindsight" labels carry the action, the "forecast" labels are noise."""

import dataclasses
import json
import shutil

import pytest
from experiment_helpers import task_pair
from test_experiment import experiment

from hsrl.data import list_chunks, read_chunk, write_chunk
from hsrl.errors import InputError
from hsrl.experiment.config import ExperimentConfig, plan, run_experiment, upper_bound_arms
from rl_helpers import SPEC

HINDSIGHT_SPEC = json.dumps({**json.loads(SPEC), "future": 3})


def _pair(root, name, noise):
    train, held = task_pair(root / f"tmp-{name}", 0, noise=noise)  # seed 0 both: the same rows, other labels
    shutil.move(str(train), str(root / name))
    shutil.move(str(held), str(root / f"{name}-heldout"))
    return root / name, root / f"{name}-heldout"


@pytest.fixture(scope="module")
def ladder_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ladder")
    forecast, forecast_held = _pair(root, "forecast", noise=True)
    hindsight, hindsight_held = _pair(root, "hindsight", noise=False)
    for folder in (hindsight, hindsight_held):
        for path in list_chunks(folder):  # the same rows, labelled by a spec whose prompts show 3 next steps
            chunk = read_chunk(path)
            write_chunk(path, chunk.arrays, dataclasses.replace(chunk.meta, spec_json=HINDSIGHT_SPEC))
    return root, forecast, forecast_held, hindsight, hindsight_held


def test_the_hindsight_arm_is_the_ladders_top_rung(ladder_data):
    root, forecast, forecast_held, hindsight, hindsight_held = ladder_data
    config = dataclasses.replace(experiment(forecast, forecast_held, root / "exp", seeds=6),
                                 offline=(str(forecast), str(hindsight)),
                                 eval_data=(str(forecast_held), str(hindsight_held)), eval_source=str(forecast_held))
    assert upper_bound_arms(plan(config)) == ("awr-hidden-hindsight",)
    report = run_experiment(config)
    agg = report["aggregates"]
    lad = agg["ladder"]["awr"]
    assert [e["rung"] for e in lad["rungs"]] == ["baseline", "control", "hidden", "upper bound"]
    top = lad["rungs"][-1]
    assert top["arm"] == "awr-hidden-hindsight" and "source:forecast-heldout" in top and "zero" in top
    # the upper bound reads the action from its states; with the forecast's (noise) states it is lost
    assert top["mean"][0] > 0.3 and top["source:forecast-heldout"][0] < 0.15
    # the upper bound beats the baseline and the control; the noise forecast does neither
    assert agg["claims"]["awr-hidden-hindsight"]["beats_baseline"] == "above"
    assert agg["claims"]["awr-hidden-hindsight"]["beats_control"] == "above"
    assert agg["claims"]["awr-hidden-forecast"]["beats_baseline"] not in ("above", "below")
    room = lad["room"][0]
    assert room["upper"] == "awr-hidden-hindsight" and room["hidden"] == "awr-hidden-forecast"
    assert room["mean_difference"]["low"] > 0
    md = (root / "exp" / "experiment.md").read_text()
    assert "| upper bound | awr-hidden-hindsight |" in md and "Room left for a better forecaster" in md
    assert "scored with forecast-heldout's states (cross-source)" in md and "| source:forecast-heldout |" in md
    assert "AWR ladder (means, from the baseline up)" in agg["verdict"]
    # the forecast arm was not scored again with its own states; the hindsight arm's runs record the source
    runs = {(r["arm"], r["seed"]): r for r in report["runs"]}
    assert "source:forecast-heldout" not in runs[("awr-hidden-forecast", 0)]["ablations"]
    assert runs[("awr-hidden-hindsight", 0)]["identity"]["eval_source"] == str(forecast_held.resolve())


def test_hindsight_data_needs_offline_evaluation_and_eval_source_needs_eval_data(ladder_data, tmp_path):
    root, forecast, forecast_held, hindsight, hindsight_held = ladder_data
    with pytest.raises(Exception, match="hindsight labels"):
        ExperimentConfig(offline=str(hindsight), out=str(tmp_path / "a"), progress=False).check_experiment()
    with pytest.raises(InputError, match="--eval-source scores the hidden arms offline"):
        ExperimentConfig(offline=str(forecast), eval_source=str(forecast_held), out=str(tmp_path / "b"),
                         progress=False).check_experiment()


def test_a_text_ablation_file_gives_one_ablation_per_line(tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("a constant sentence\n\nxq zvv plorth\nWalk into the lava.\n")
    config = ExperimentConfig(offline=str(tmp_path), ablation=f"real,shuffled,text:{texts}", out=str(tmp_path / "o"))
    names = config.ablations()
    assert names[:2] == ("real", "shuffled") and len(names) == 5
    assert [n.rsplit(":", 1)[1] for n in names[2:]] == ["1", "3", "4"]  # the file's own line numbers
