"""`hsrl experiment --ray`: one Ray task per (arm, seed) on a local Ray of two CPU workers; a worker killed
mid-run is retried from its checkpoint, and the results equal the sequential run's."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from experiment_helpers import task_pair

ray = pytest.importorskip("ray")

from hsrl.experiment.config import ExperimentConfig, run_experiment  # noqa: E402
from hsrl.experiment.runs import RESULT_FILE, WORKER_FILE  # noqa: E402

SETTINGS = dict(seeds=2, awr_steps=1500, awr_batch_size=256, awr_lr=1e-3, awr_beta=1.0, awr_save_every=100,
                width=64, progress=False, bootstrap_reps=500, control=False)  # the Ray path, not the arms


def _victim(out: Path, deadline: float) -> Path:
    """A run that has written a checkpoint but not its result: the one to kill."""
    while time.time() < deadline:
        for run in sorted(out.glob("runs/*/seed*")):
            if (run / WORKER_FILE).exists() and list(run.glob("train/checkpoints/step_*.msgpack")) \
                    and not (run / RESULT_FILE).exists():
                return run
        time.sleep(0.2)
    raise AssertionError("no run wrote a checkpoint in time")


def test_ray_runs_equal_sequential_runs_and_survive_a_killed_worker(tmp_path):
    train, held = task_pair(tmp_path, 2)
    config = lambda out, **kw: ExperimentConfig(offline=str(train), eval_data=str(held), out=str(out),  # noqa: E731
                                                **SETTINGS, **kw)
    sequential = run_experiment(config(tmp_path / "seq"))

    out = tmp_path / "ray"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # a local Ray of two workers
    try:
        result = {}
        thread = threading.Thread(target=lambda: result.update(report=run_experiment(
            config(out, ray="local", cpus_per_run=1, retries=2))))
        thread.start()
        victim = _victim(out, time.time() + 300)
        pid = int((victim / WORKER_FILE).read_text().split()[1])
        assert pid != os.getpid(), "the run works in a Ray worker, not in the driver"
        os.kill(pid, signal.SIGKILL)  # the worker dies mid-run, after its first checkpoint
        thread.join(timeout=600)
        assert not thread.is_alive() and "report" in result
    finally:
        ray.shutdown()
    report = result["report"]
    killed = json.loads((victim / RESULT_FILE).read_text())
    assert killed["train"]["resumed"], "the retried task resumed from the killed run's checkpoint"
    assert int((victim / WORKER_FILE).read_text().split()[1]) != pid, "it ran again on a fresh worker"
    assert len(report["runs"]) == 4
    by_run = lambda rep: {(r["arm"], r["seed"]): r["ablations"] for r in rep["runs"]}  # noqa: E731
    assert by_run(report) == by_run(sequential)
    assert report["aggregates"] == sequential["aggregates"]
