"""Metrics logger (JSONL + TensorBoard), `hsrl plot`, and the `hsrl train-awr` command line."""


import numpy as np
import pytest
from rl_helpers import write_hidden_task

from hsrl.cli import main
from hsrl.rl.metrics import METRICS, MetricsLogger, read_metrics, tag
from hsrl.rl.plot import ema, plot_runs

def test_logger_writes_jsonl_and_tensorboard(tmp_path):
    with MetricsLogger(tmp_path) as log:
        log.log(10, {"critic_loss": 1.5, "SPS": 100, "explained_variance": float("nan")})
        log.log(20, {"critic_loss": 1.0, "SPS": 120, "explained_variance": 0.5})
    lines = read_metrics(tmp_path)
    assert [x["step"] for x in lines] == [10, 20]
    assert lines[0]["explained_variance"] is None and lines[1]["critic_loss"] == 1.0
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert tag("critic_loss") == "losses/critic_loss" and tag("SPS") == "charts/SPS" and tag("a/b") == "a/b"


def test_logger_resume_drops_lines_past_the_checkpoint(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as log:
        for step in (10, 20, 30):
            log.log(step, {"critic_loss": step})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 40, "crit')  # a line cut off by a crash
    with MetricsLogger(tmp_path, resume_step=20, tensorboard=False) as log:
        log.log(30, {"critic_loss": 0.0})
    assert [(x["step"], x["critic_loss"]) for x in read_metrics(tmp_path)] == [(10, 10), (20, 20), (30, 0.0)]
    with MetricsLogger(tmp_path, tensorboard=False):  # a fresh run starts a fresh log
        pass
    assert read_metrics(tmp_path) == []


def test_every_awr_metric_is_documented(tmp_path):
    """Every name a real AWR run logs (the loss's metrics and the throughput) is documented in METRICS."""
    from hsrl.rl.awr import TrainAWRConfig
    from hsrl.rl.awr_seeds import train_awr

    data = write_hidden_task(tmp_path / "data", np.random.default_rng(0), files=1, rows_per_file=64)
    train_awr(TrainAWRConfig(str(data), out=str(tmp_path / "run"), steps=2, log_every=2, save_every=2, width=8,
                             batch_size=8, steps_per_call=2, tensorboard=False, progress=False))
    logged = set(read_metrics(tmp_path / "run")[-1]) - {"step", "wall_time"}
    assert {"actor_loss", "critic_loss", "SPS"} <= logged
    assert logged <= set(METRICS), f"logged but not documented: {sorted(logged - set(METRICS))}"


def test_plot_overlays_runs(tmp_path):
    for name, scale in (("a", 1.0), ("b", 2.0)):
        with MetricsLogger(tmp_path / name, tensorboard=False) as log:
            for step in range(1, 6):
                log.log(step * 100, {"critic_loss": scale / step, "entropy": 2.0, "custom": step})
    written = plot_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "plots", smooth=0.5)
    assert {p.name for p in written} == {"critic_loss.png", "entropy.png", "custom.png", "curves.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)
    assert [p.name for p in plot_runs([tmp_path / "a"], metrics=["entropy"])] == ["entropy.png", "curves.png"]
    assert (tmp_path / "a" / "plots" / "entropy.png").exists()
    with pytest.raises(ValueError, match="no run logged"):
        plot_runs([tmp_path / "a"], metrics=["nope"])
    with pytest.raises(FileNotFoundError):
        plot_runs([tmp_path / "missing"])
    np.testing.assert_allclose(ema(np.array([1.0, 1.0, 1.0]), 0.9), [1.0, 1.0, 1.0])


def test_command_line(tmp_path, capsys):
    data = write_hidden_task(tmp_path / "data", np.random.default_rng(0), files=1, rows_per_file=256)
    run = tmp_path / "run"
    args = ["train-awr", str(data), "--out", str(run), "--steps", "20", "--log-every", "10", "--save-every", "10",
            "--width", "16", "--batch-size", "32", "--no-progress"]
    assert main(args) == 0
    lines = read_metrics(run)
    assert [x["step"] for x in lines] == [10, 20]
    assert {"actor_loss", "critic_loss", "explained_variance", "entropy", "SPS"} <= set(lines[-1])
    out = capsys.readouterr().out
    assert "critic_loss" in out and "step_000000020.json" in out
    assert main(["plot", str(run), "--out", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "curves.png").exists()
    # resuming with another batch size is a clean error
    assert main(args[:-3] + ["--batch-size", "64", "--no-progress"]) == 2
    assert "--batch-size 32" in capsys.readouterr().err


def test_command_line_errors(tmp_path, capsys):
    data = write_hidden_task(tmp_path / "data", np.random.default_rng(0), files=1, rows_per_file=64, returns=False)
    assert main(["train-awr", str(data), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "return_to_go" in err and f"hsrl returns {data}" in err and "Traceback" not in err
    assert main(["train-awr", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")]) == 2
    assert main(["train-awr", str(data), "--out", str(tmp_path / "run"), "--beta", "0"]) == 2
    assert main(["plot", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 3 and "Traceback" not in err  # one line each
