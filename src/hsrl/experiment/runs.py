"""One (arm, seed) of an experiment: train, evaluate with the ablations, write `result.json`; and the
loops that run them, in groups (`groups`): the seeds of one arm trained as one compiled program (`run_group`,
`train_awr_seeds`; `hsrl.rl.awr_seeds`), one group after another in this process or one Ray task per group.

A run is a plain `Job` (picklable, so a Ray task can carry it). `run_job` is idempotent: a run folder
with a `result.json` of the same job is returned as it is; AWR resumes from its newest checkpoint
(`train_awr` does that by itself), and so does online PPO (`train_online`); a run stopped on SIGTERM
(`Preempted`) stops the experiment, and rerunning it goes on from there. Each run writes `worker.txt` ("host pid") while it works, so an operator (or a
test) can see where it runs.

A group is idempotent the same way: its finished seeds are returned as they are, and only the others train
(from the newest step all of them hold). Each seed is evaluated on its own once trained.

On Ray, each group is one task with `num_cpus` / `num_gpus` of its own and `max_retries`: when its worker
dies, Ray starts the task again on a fresh worker, where `run_group` resumes from the checkpoints. Every run
draws its randomness from its seed alone, so the results equal a sequential run's (and a group's: bit for bit with
AWR's "loop" seed axis, to float rounding with "vmap").
"""

from __future__ import annotations

import dataclasses
import functools
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
    eval_source: str | None = None  # held-out data of another spec: also scored with its states (cross-source)

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
            "all_tokens_valid": self.all_tokens_valid, "eval_source": self.eval_source})


# setting -> default, left out of a run's identity at that default
LATER_SETTINGS = {"all_tokens_valid": False, "spec": None, "fusion": "concat", "arch": "shared", "hidden_skip_n": 1,
                  "keep": 3, "save_trajectories": None, "save_trajectories_every": 1, "save_trajectories_max_gb": 50.0,
                  "history": 0, "prompt_template": None, "control_map": "linear", "eval_source": None}


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
        from hsrl.rl.awr_seeds import train_awr

        return _train_result(job, train_awr(job.train))
    from hsrl.rl.ppo import train_online

    return _train_result(job, train_online(job.train))  # resumes from its newest checkpoint; a finished run returns


def _train_result(job: Job, summary: dict) -> dict:
    """result.json's `train` of a job from its trainer's summary (`train_awr` / `train_online`, alone or in a
    group)."""
    if job.algo == "awr":
        from hsrl.rl.metrics import read_metrics

        # the weights' ESS over the last logged interval (near 1: behaviour cloning); the last interval, because a
        # run resumed after a kill logs the interval it was cut in over fewer steps
        ess = [line["weight_ess"] for line in read_metrics(job.train.out) if "weight_ess" in line]
        return {"resumed": bool(summary.get("resumed")), "step": int(summary["step"]),
                "weight_ess": float(ess[-1]) if ess else None}
    return {"resumed": bool(summary.get("resumed_from")), "step": int(summary["steps"])}


def _episode_rule() -> str:
    from hsrl.evaluate import EPISODE_RULE

    return EPISODE_RULE


def _evaluate(job: Job) -> tuple[dict, tuple[str, ...]]:
    checkpoint = Path(job.train.out)
    if job.eval_data is not None:
        from hsrl.experiment.offline import evaluate_offline

        scores = evaluate_offline(checkpoint, job.eval_data, job.ablations, seed=job.eval_seed, run_seed=job.seed,
                                  all_tokens_valid=job.all_tokens_valid)
        if job.eval_source is not None:  # the same policy with another spec's states (a cross-source evaluation)
            scores[source_name(job.eval_source)] = evaluate_offline(
                checkpoint, job.eval_source, ("real",), seed=job.eval_seed, run_seed=job.seed,
                all_tokens_valid=job.all_tokens_valid, cross_source=True)["real"]
        return scores, OFFLINE_METRICS
    from hsrl.evaluate import evaluate

    report = evaluate(job.eval)
    keep = ("episodes", "return_mean", "return_std", "length_mean", "craftax_score", "achievements", "halves")
    return {r["ablation"]: {k: r[k] for k in keep if k in r} for r in report["results"]}, CRAFTAX_METRICS


def source_name(folder: str) -> str:
    """The ablation name of an --eval-source's scores: source:FOLDER_NAME."""
    return f"source:{Path(folder).resolve().name}"


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


def _start(job: Job) -> None:
    run_dir = Path(job.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / WORKER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}\n")


def run_job(job: Job) -> dict:
    """Train and evaluate one (arm, seed), or return its finished result."""
    done = finished(job)
    if done is not None:
        return done
    _start(job)
    return _finish(job, _train(job))


def _finish(job: Job, train: dict) -> dict:
    """Evaluate a trained job and write its result.json; returns the result."""
    run_dir = Path(job.run_dir)
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


def group_trainer(algo: str, seed_axis: str = "auto") -> Callable[[list], list[dict]] | None:
    """The function that trains several seeds of one arm as one compiled program, `configs -> summaries` (as the
    single trainer's, in order): AWR's `train_awr_seeds` (with `seed_axis`), online PPO's `train_online_seeds` where
    `hsrl.rl.ppo` has it; None where an algorithm's seeds train one at a time."""
    if algo == "awr":
        from hsrl.rl.awr_seeds import train_awr_seeds

        return functools.partial(train_awr_seeds, seed_axis=seed_axis)
    from hsrl.rl import ppo

    return getattr(ppo, "train_online_seeds", None)


def _group_key(job: Job) -> tuple:
    """What jobs share to train as one program: arm, algorithm and every training setting but seed and out."""
    train = {k: v for k, v in dataclasses.asdict(job.train).items() if k not in ("seed", "out")}
    return job.arm, job.algo, type(job.train).__name__, json.dumps(train, sort_keys=True, default=str)


def _groupable(job: Job) -> bool:
    """Whether the job's algorithm trains seeds in groups, with the job's settings (online PPO refuses some for a
    group: `hsrl.rl.ppo.GROUP_REFUSED`)."""
    if group_trainer(job.algo) is None:
        return False
    if job.algo == "ppo":
        from hsrl.rl import ppo

        return not any(getattr(job.train, name, None) for name in getattr(ppo, "GROUP_REFUSED", {}))
    return True


def groups(jobs: list[Job], seeds_per_program: int | None = None) -> list[list[Job]]:
    """`jobs` packed into programs, in order: consecutive jobs of one arm with the same settings but seed, at most
    `seeds_per_program` each (None: all of them; a device that cannot hold them splits them further, see
    `hsrl.rl.awr_seeds`), one job each where the algorithm has no group trainer (`group_trainer`)."""
    if seeds_per_program is not None and seeds_per_program < 1:
        raise ValueError(f"seeds_per_program must be at least 1, got {seeds_per_program}")
    out: list[list[Job]] = []
    for job in jobs:
        last = out[-1] if out else None
        if (last and _group_key(last[0]) == _group_key(job) and _groupable(job)
                and (seeds_per_program is None or len(last) < seeds_per_program)):
            last.append(job)
        else:
            out.append([job])
    return out


def run_group(jobs: list[Job], seed_axis: str = "auto") -> list[dict]:
    """Train the seeds of one arm as one program (`group_trainer`) and evaluate each; their results, in order (as
    `run_job`'s). Finished seeds are returned as they are and only the others train. An AWR seed left alone still
    trains as in a program (`train_awr_seeds`: with vmap, padded, so its numbers are those of any group); other
    algorithms' lone seeds are `run_job`."""
    results: dict[int, dict] = {}
    for i, job in enumerate(jobs):
        done = finished(job)
        if done is not None:
            results[i] = done
    todo = [i for i in range(len(jobs)) if i not in results]
    trainer = group_trainer(jobs[0].algo, seed_axis) if len(todo) > 1 or (todo and jobs[0].algo == "awr") else None
    if trainer is None:
        results.update({i: run_job(jobs[i]) for i in todo})
        return [results[i] for i in range(len(jobs))]
    for i in todo:
        _start(jobs[i])
    summaries = trainer([jobs[i].train for i in todo])
    for i, summary in zip(todo, summaries):
        results[i] = _finish(jobs[i], _train_result(jobs[i], summary))
    return [results[i] for i in range(len(jobs))]


def run_sequential(jobs: list[Job], on_result: Callable[[dict], None] = lambda r: None,
                   seeds_per_program: int | None = None, seed_axis: str = "auto") -> list[dict]:
    """Every job in this process, the seeds of an arm in groups (`groups`, `run_group`), one group after another
    (`seeds_per_program` 1: each job alone, `run_job`); `on_result` as each result is ready. Results in the order of
    `jobs`."""
    results = []
    for group in groups(jobs, seeds_per_program):
        for result in run_group(group, seed_axis) if seeds_per_program != 1 else [run_job(group[0])]:
            results.append(result)
            on_result(result)
    return results


def _run_alone(jobs: list[Job], seed_axis: str = "auto") -> list[dict]:
    """A Ray task of one job trained alone (`--seeds-per-program 1`)."""
    return [run_job(job) for job in jobs]


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
               on_result: Callable[[dict], None] = lambda r: None, seeds_per_program: int | None = None,
               seed_axis: str = "auto") -> list[dict]:
    """One Ray task per group (`groups`; `seeds_per_program` 1: one per job), with `cpus_per_run` / `gpus_per_run`
    each; results in the order of `jobs`. A task whose worker dies is retried (from the runs' checkpoints) up to
    `retries` times; after that its error is raised."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=None if address in ("", "local") else address, include_dashboard=False,
                 log_to_driver=False)
    try:
        alone = seeds_per_program == 1
        task = ray.remote(_run_alone if alone else run_group).options(
            num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=retries, retry_exceptions=False,
            runtime_env=task_runtime_env(cpus_per_run))
        packed = groups(jobs, seeds_per_program)
        refs = {task.remote(group, seed_axis): g for g, group in enumerate(packed)}
        results: list[list[dict] | None] = [None] * len(packed)
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            g = refs[ready[0]]
            try:
                results[g] = ray.get(ready[0])
            except (ray.exceptions.WorkerCrashedError, ray.exceptions.RayTaskError) as err:
                for ref in pending:
                    ray.cancel(ref, force=True)
                cause = getattr(err, "cause", None)
                if isinstance(cause, (ValueError, FileNotFoundError)):
                    raise cause from None  # bad input: the same one-line error as a sequential run
                seeds = ", ".join(str(j.seed) for j in packed[g])
                raise RuntimeError(f"{packed[g][0].arm} seed{'s' if len(packed[g]) > 1 else ''} {seeds} failed on "
                                   f"Ray: {err}") from err
            for result in results[g]:
                on_result(result)
        return [r for group in results for r in group]
    finally:
        if started:
            ray.shutdown()
