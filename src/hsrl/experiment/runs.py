"""One (arm, seed) of an experiment: train, evaluate with the ablations, write `result.json`; and the
loops that run them, one after another or as Ray tasks.

A run is a plain `Job` (picklable, so a Ray task can carry it). `run_job` is idempotent: a run folder
with a `result.json` of the same job is returned as it is; AWR resumes from its newest checkpoint
(`train_awr` does that by itself), and so does online PPO (`train_online`); a run stopped on SIGTERM
(`Preempted`) stops the experiment, and rerunning it goes on from there. Each run writes `worker.txt` ("host pid") while it works, so an operator (or a
test) can see where it runs.

On Ray, each job is one task with `num_cpus` / `num_gpus` of its own and `max_retries`: when its worker
dies, Ray starts the task again on a fresh worker, where `run_job` resumes from the checkpoint. Every run
draws its randomness from its seed alone, so the results equal a sequential run's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hsrl.redact import without_secrets

RESULT_FILE = "result.json"
WORKER_FILE = "worker.txt"
TRAIN_DIR = "train"
EVAL_DIR = "eval"
# What each kind of evaluation reports per ablation (the first is the headline metric).
CRAFTAX_METRICS = ("return_mean", "craftax_score")
OFFLINE_METRICS = ("action_match",)


@dataclass(frozen=True)
class Job:
    arm: str  # e.g. "awr-hidden": algorithm and role (baseline, hidden, control)
    algo: str  # "awr" or "ppo"
    hidden: bool  # the network reads a hidden input (the LLM's state, or the control's projection)
    seed: int
    run_dir: str
    train: object  # TrainAWRConfig or OnlineConfig, its `out` inside run_dir
    eval: object | None  # EvalConfig (Craftax rollouts), or None with eval_data
    eval_data: str | None = None  # held-out labelled data: offline evaluation instead of rollouts
    ablations: tuple[str, ...] = ("real", "zero", "shuffled", "constant")
    eval_seed: int = 0
    all_tokens_valid: bool = False  # per-token states of eval_data without hidden_tokens: pool over all positions

    def identity(self) -> dict:
        """What defines the run's numbers (not where it runs or whether it shows progress, nor secrets: a rotated
        token is the same run). Settings added later (`LATER_SETTINGS`) appear only when not at their default, so
        runs finished before still match."""
        def plain(cfg):
            if cfg is None:
                return None
            d = without_secrets(dataclasses.asdict(cfg))
            for k in ("progress", "tensorboard", "out", "checkpoint" if cfg is self.eval else ""):
                d.pop(k, None)
            return _drop_later_defaults(d)

        return _drop_later_defaults({
            "arm": self.arm, "seed": self.seed, "train": plain(self.train), "eval": plain(self.eval),
            "eval_data": self.eval_data, "ablations": list(self.ablations), "eval_seed": self.eval_seed,
            "all_tokens_valid": self.all_tokens_valid})


# setting -> default, left out of a run's identity at that default
LATER_SETTINGS = {"all_tokens_valid": False, "spec": None, "fusion": "concat", "arch": "shared", "hidden_skip_n": 1,
                  "keep": 3, "save_trajectories": None, "save_trajectories_every": 1, "save_trajectories_max_gb": 50.0,
                  "history": 0, "prompt_template": None, "control_map": "linear"}


def _drop_later_defaults(d: dict) -> dict:
    return {k: v for k, v in d.items() if not (k in LATER_SETTINGS and v == LATER_SETTINGS[k])}


def _write_json(path: Path, obj) -> None:
    from hsrl.atomic import write_text_atomic

    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True))


def finished(job: Job) -> dict | None:
    """The run's result if it finished with these settings; ValueError if it finished with others."""
    path = Path(job.run_dir) / RESULT_FILE
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    if job.eval is not None and result.get("episode_selection") != _episode_rule():
        return None  # evaluated in Craftax by an older rule (the first episodes to finish: biased): evaluate again
    # secrets left out of both sides: results written before identities left them out held `"token": null`
    if without_secrets(result.get("identity")) != json.loads(json.dumps(job.identity())):
        raise ValueError(f"{path} holds a run with other settings; use another --out, or the same settings "
                         "to reuse it")
    return result


def _train(job: Job) -> dict:
    if job.algo == "awr":
        from hsrl.rl.awr import train_awr
        from hsrl.rl.metrics import read_metrics

        summary = train_awr(job.train)
        # the weights' ESS over the last logged interval (near 1: behaviour cloning); the last interval, because a
        # run resumed after a kill logs the interval it was cut in over fewer steps
        ess = [line["weight_ess"] for line in read_metrics(job.train.out) if "weight_ess" in line]
        return {"resumed": bool(summary.get("resumed")), "step": int(summary["step"]),
                "weight_ess": float(ess[-1]) if ess else None}
    from hsrl.rl.ppo import train_online

    summary = train_online(job.train)  # resumes from the arm's newest checkpoint; a finished run returns its summary
    return {"resumed": bool(summary.get("resumed_from")), "step": int(summary["steps"])}


def _episode_rule() -> str:
    from hsrl.evaluate import EPISODE_RULE

    return EPISODE_RULE


def _evaluate(job: Job) -> tuple[dict, tuple[str, ...]]:
    checkpoint = Path(job.train.out)
    if job.eval_data is not None:
        from hsrl.experiment.offline import evaluate_offline

        return evaluate_offline(checkpoint, job.eval_data, job.ablations, seed=job.eval_seed,
                                run_seed=job.seed, all_tokens_valid=job.all_tokens_valid), OFFLINE_METRICS
    from hsrl.evaluate import evaluate

    report = evaluate(job.eval)
    keep = ("episodes", "return_mean", "return_std", "length_mean", "craftax_score", "achievements", "halves")
    return {r["ablation"]: {k: r[k] for k in keep if k in r} for r in report["results"]}, CRAFTAX_METRICS


def _gate(job: Job) -> dict:
    """The trained policy's learned gate (`--fusion gated`) and how far training could have moved its logit (its
    summed learning rate, `hsrl.rl.networks` "Reading a gate"): result.json's `train.gate` and `train.gate_travel`,
    both None for concat fusion."""
    if getattr(job.train, "fusion", "concat") != "gated":
        return {"gate": None, "gate_travel": None}
    from hsrl.rl.checkpoint import load_policy

    policy = load_policy(job.train.out)
    return {"gate": policy.gate, "gate_travel": policy.gate_travel}


def _control(job: Job) -> str | None:
    """A control arm's input in words (`hsrl.data.projection.describe_control` of its checkpoint's spec), None for
    other arms."""
    if not getattr(job.train, "control", False):
        return None
    from hsrl.data.projection import describe_control
    from hsrl.rl.checkpoint import read_checkpoint_meta

    return describe_control(read_checkpoint_meta(job.train.out)["spec_json"])


def run_job(job: Job) -> dict:
    """Train and evaluate one (arm, seed), or return its finished result."""
    done = finished(job)
    if done is not None:
        return done
    run_dir = Path(job.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / WORKER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}\n")
    train = _train(job)
    train.update(_gate(job))
    control = _control(job)
    if control is not None:
        train["control"] = control
    ablations, metrics = _evaluate(job)
    result = {"arm": job.arm, "algo": job.algo, "hidden": job.hidden, "seed": job.seed, "run_dir": str(run_dir),
              "metrics": list(metrics), "ablations": ablations, "train": train, "identity": job.identity()}
    if job.eval is not None:  # how the Craftax evaluation chose its episodes (`hsrl.evaluate.episode_selection`)
        result["episode_selection"] = _episode_rule()
    _write_json(run_dir / RESULT_FILE, result)
    return result


def run_sequential(jobs: list[Job], on_result: Callable[[dict], None] = lambda r: None) -> list[dict]:
    results = []
    for job in jobs:
        results.append(run_job(job))
        on_result(results[-1])
    return results


# XLA:CPU runs each computation on a pool of every core; on Ray each task has `cpus_per_run` cores, so a
# one-CPU task computes on one thread (tasks sharing the cores measured ~15% slower otherwise; Ray itself sets
# OMP_NUM_THREADS, which torch follows, to a task's CPU count).
XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def task_runtime_env(cpus_per_run: float) -> dict | None:
    """The environment of each run's Ray task: one XLA thread when the task has at most one CPU (added to the
    caller's XLA_FLAGS); None (Ray's default) otherwise."""
    if cpus_per_run > 1:
        return None
    flags = " ".join(f for f in (os.environ.get("XLA_FLAGS", ""), XLA_ONE_THREAD) if f)
    return {"env_vars": {"XLA_FLAGS": flags}}


def run_on_ray(jobs: list[Job], address: str, cpus_per_run: float, gpus_per_run: float, retries: int,
               on_result: Callable[[dict], None] = lambda r: None) -> list[dict]:
    """One Ray task per job; results in the order of `jobs`. A task whose worker dies is retried (from the
    run's checkpoint) up to `retries` times; after that its error is raised."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=None if address in ("", "local") else address, include_dashboard=False,
                 log_to_driver=False)
    try:
        task = ray.remote(run_job).options(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=retries,
                                           retry_exceptions=False, runtime_env=task_runtime_env(cpus_per_run))
        refs = {task.remote(job): i for i, job in enumerate(jobs)}
        results: list[dict | None] = [None] * len(jobs)
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            i = refs[ready[0]]
            try:
                results[i] = ray.get(ready[0])
            except (ray.exceptions.WorkerCrashedError, ray.exceptions.RayTaskError) as err:
                for ref in pending:
                    ray.cancel(ref, force=True)
                cause = getattr(err, "cause", None)
                if isinstance(cause, (ValueError, FileNotFoundError)):
                    raise cause from None  # bad input: the same one-line error as a sequential run
                raise RuntimeError(f"{jobs[i].arm} seed {jobs[i].seed} failed on Ray: {err}") from err
            on_result(results[i])
        return results
    finally:
        if started:
            ray.shutdown()
