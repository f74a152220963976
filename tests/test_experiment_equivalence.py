"""`hsrl experiment` answering "no effect" end to end (AWR on the synthetic hidden-state task, --eval-data): a pilot's
plan predicts the seeds at which a pure-noise hidden state is shown equivalent on "uses", and that many seeds show
it; `--plan` prints the plan without training; the sequential mode stops at its first look on a clear case and
uses every round on one it cannot answer."""

import json

import pytest
from experiment_helpers import task_pair
from test_experiment import experiment

from hsrl.errors import InputError
from hsrl.experiment.config import plan_from_finished, run_experiment, run_experiment_cli

MARGIN = "0.02"  # action match: chance is 1/17; a noise state moves it by evaluation noise alone


def _uses(agg) -> str:
    return agg["claims"]["awr"]["uses"]


def test_a_noise_state_is_shown_equivalent_at_the_seeds_the_plan_predicts(tmp_path, capsys):
    train, held = task_pair(tmp_path, 1, noise=True)
    out = tmp_path / "exp"
    with pytest.raises(InputError, match="run a pilot first"):
        plan_from_finished(experiment(train, held, out, seeds=3, control=False, margin=MARGIN))
    pilot = run_experiment(experiment(train, held, out, seeds=3, control=False, margin=MARGIN))["aggregates"]
    planned = pilot["plan"]["questions"]["awr"]["uses"]["equivalence"]
    print("pilot:", pilot["plan"])
    assert 3 <= planned["seeds"] <= 8, planned  # a noise state: the gaps' spread is evaluation noise alone
    # --plan reads the finished pilot and trains nothing
    assert run_experiment_cli(experiment(train, held, out, seeds=3, control=False, margin=MARGIN, plan=True)) == 0
    printed = capsys.readouterr().out
    assert "seeds to show equivalence" in printed and f"| awr | uses | +-{float(MARGIN):.3g} |" in printed
    k = max(planned["seeds"], 4)
    agg = run_experiment(experiment(train, held, out, seeds=k, control=False, margin=MARGIN))["aggregates"]
    print(agg["verdict"])
    assert _uses(agg) == "equivalent"
    assert agg["claims"]["awr"]["beats_baseline"] not in ("above", "below")
    assert "equivalent: the policy does not use its hidden state by more than 0.02" in agg["verdict"]
    md = (out / "experiment.md").read_text()
    assert "seeds to show equivalence" in md and "Margins of equivalence: awr: use +-0.02" in md
    saved = json.loads((out / "experiment.json").read_text())["aggregates"]
    assert saved["margins"]["awr"]["uses"] == pytest.approx(0.02) and saved["plan"]["questions"]["awr"]["uses"]


def test_sequential_stops_at_the_first_look_when_the_answer_is_clear(tmp_path):
    train, held = task_pair(tmp_path, 0)
    out = tmp_path / "exp"
    report = run_experiment(experiment(train, held, out, seeds=6, seeds_max=12, sequential=True, control=False))
    agg = report["aggregates"]
    assert agg["claims"]["awr"] == {"uses": "above", "beats_baseline": "above", "beats_control": "not run"}
    assert agg["sequential"]["stopped_at_seeds"] == 6 and agg["sequential"]["reason"] == "every question answered"
    assert len(report["runs"]) == 12 and agg["family"]["alpha"] == pytest.approx(0.025)  # 0.05 x 6 / 12


def test_sequential_uses_every_round_when_a_question_cannot_be_answered(tmp_path):
    """A noise state: P(hidden > baseline) cannot be shown within 1/2 +- 0.2 at 12 seeds, so every round runs."""
    train, held = task_pair(tmp_path, 1, noise=True)
    out = tmp_path / "exp"
    config = experiment(train, held, out, seeds=6, seeds_max=12, sequential=True, control=False, margin=MARGIN)
    agg = run_experiment(config)["aggregates"]
    assert agg["sequential"]["stopped_at_seeds"] == 12 and agg["sequential"]["reason"] == "--seeds-max reached"
    assert agg["sequential"]["levels"] == pytest.approx([0.025, 0.025])
    assert agg["claims"]["awr"]["beats_baseline"] not in ("above", "below")
    # a rerun walks the same looks over the finished runs and stops in the same place, training nothing
    again = run_experiment(config)
    assert again["config"]["runs_done"] == 0 and again["aggregates"]["claims"] == agg["claims"]
