"""The main job at a tiny size: every artefact of the report exists and holds numbers."""

import json
import math
import re

from hsrl.quickstart import QuickstartConfig, quickstart

TINY = dict(envs=2, collect_steps=64, chunk_steps=16, awr_steps=20, online_steps=64, online_num_steps=16,
            eval_episodes=1, max_episode_steps=16, width=32, progress=False)


def test_quickstart_writes_a_complete_report(tmp_path):
    report = quickstart(QuickstartConfig(out=str(tmp_path / "qs"), **TINY))
    text = (report / "README.md").read_text()
    for section in ("## Data", "## Offline AWR", "## Online PPO", "## Evaluation with hidden-state ablations",
                    "## Scale it up", "Qwen/Qwen3-4B-Thinking-2507", "hsrl label", "--ray"):
        assert section in text, section
    summary = json.loads((report / "summary.json").read_text())
    assert summary["stats"]["samples"] == 64
    for run in ("awr_hidden", "awr_baseline"):
        m = summary["awr"][run]
        assert m["step"] == 20 and math.isfinite(m["critic_loss"]) and math.isfinite(m["actor_loss"])
    assert summary["online"]["steps"] == 64 and summary["online"]["llm_calls"] >= 1
    ablations = [r["ablation"] for r in summary["eval"]["awr_hidden"]]
    assert ablations == ["real", "zero", "shuffled", "constant"]
    assert [r["ablation"] for r in summary["eval"]["awr_baseline"]] == ["real"]
    for results in summary["eval"].values():
        for r in results:
            assert math.isfinite(r["return_mean"]) and math.isfinite(r["craftax_score"])
    rows = re.findall(r"^\| awr_hidden \| (\w+) \| (-?[\d.]+) ± ([\d.]+) \|", text, re.M)
    assert [r[0] for r in rows] == ablations
    for png in ("ablations_awr_hidden.png", "achievements.png", "awr/critic_loss.png", "awr/curves.png",
                "online/curves.png"):
        assert (report / png).stat().st_size > 1000, png
    # a rerun reuses the data and finished runs, and still writes the report
    again = quickstart(QuickstartConfig(out=str(tmp_path / "qs"), **TINY))
    assert "labels reused from the previous run" in (again / "README.md").read_text()
