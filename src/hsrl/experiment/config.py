"""`hsrl experiment`: the config (its fields are the flags) and the function that runs it."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

from hsrl.errors import InputError
from hsrl.evaluate import ABLATIONS
from hsrl.rl.networks import FUSIONS
from hsrl.rl.ppo import OnlineConfig

RUNS_DIR = "runs"


@dataclass(frozen=True)
class ExperimentConfig(OnlineConfig):
    """Run K seeds of the baseline, the hidden-state policy and a control, evaluate each with the hidden-state
    ablations on the same evaluation seeds, and answer three questions with calibrated tests.

    Arms: `--offline DATA` trains AWR on a labelled dataset, `--online` PPO with the flags of `hsrl online`
    (both when both are given), each as three arms: baseline (no hidden input), hidden (the LLM's state) and
    control (the hidden-state network fed a fixed random projection of the observation to the same width and
    normalisation: more input features, no new information; --no-control leaves it out). Prompt variants:
    `--offline A --offline B ...` (labellings of the same data with other prompts: --history, --template,
    --prompt-template) gives each its own hidden arm (awr-hidden-A, awr-hidden-B), with one baseline and one
    control (on the first), the same verdict for each and a pairwise comparison of the variants. Seeds are --seed ..
    --seed + --seeds - 1. Every trained policy is evaluated on Craftax by `hsrl eval`'s code (--eval-episodes
    episodes, seed --eval-seed, the same for every run), or, with --eval-data, offline on held-out labelled
    data through the same ablation functions.

    The verdict answers, on the headline metric: does the policy use its hidden state (real - shuffled, paired
    per seed: Student t interval and exact sign-flip test), does it beat the baseline, does it beat the control
    (Welch t interval and exact permutation test). real - zero is reported as sensitivity to the input only.
    rliable's mean / IQM and P(improvement) with bootstrap intervals stay in the tables (descriptive). Each
    run's scores on two halves of its evaluation show how much of the spread is evaluation noise. Writes
    OUT/experiment.json, OUT/experiment.md, intervals.png, comparisons.png, achievements.png, curves.png, and one
    folder per run under OUT/runs/ARM/seedS. Rerunning skips finished runs and resumes AWR runs from their
    checkpoints. --ray runs one Ray task per (arm, seed). Every input is checked before the first run trains.
    """

    offline: tuple[str, ...] | str | None = field(default=None, metadata={
        "repeat": True, "metavar": "DATA",
        "help": "labelled dataset folder (with return_to_go): run the AWR arms on it; repeat it (--offline A "
                "--offline B) to compare prompt variants, each its own hidden arm"})
    online: bool = field(default=False, metadata={"help": "run the online PPO arms (with the `hsrl online` flags)"})
    seeds: int = field(default=5, metadata={"help": "seeds per arm (at 5 or fewer, a paired claim rests on the t "
                                                    "interval alone: the exact sign-flip test needs 6 to reach 0.05)"})
    control: bool = field(default=True, metadata={
        "help": "run the control arm: the hidden-state network fed a fixed random projection of the observation "
                "(--no-control leaves it out, and the verdict cannot say whether the state adds information)"})
    out: str = field(default="runs/experiment", metadata={"help": "experiment folder (rerun to resume)"})
    awr_steps: int = field(default=20_000, metadata={"help": "AWR gradient steps per run"})
    awr_batch_size: int = field(default=256, metadata={"help": "AWR samples per gradient step"})
    awr_lr: float = field(default=3e-4, metadata={"help": "AWR Adam learning rate"})
    awr_beta: float = field(default=10.0, metadata={"help": "AWR temperature"})
    awr_save_every: int = field(default=2000, metadata={"help": "AWR steps between checkpoints (resume points)"})
    eval_episodes: int = field(default=32, metadata={
        "help": "evaluation episodes per ablation and run (the report says how much of the spread is evaluation "
                "noise; raise it when that share is large)"})
    eval_envs: int = field(default=8, metadata={"help": "parallel evaluation environments"})
    eval_seed: int = field(default=1000, metadata={"help": "evaluation seed, the same for every run and ablation"})
    eval_max_episode_steps: int | None = field(default=None, metadata={
        "help": "cut evaluation episodes at this length (default: Craftax's 10000)"})
    eval_data: tuple[str, ...] | str | None = field(default=None, metadata={
        "repeat": True, "metavar": "DATA",
        "help": "evaluate offline on this held-out labelled dataset (mean probability of its actions) instead "
                "of rollouts in Craftax; with several --offline, one --eval-data each, in the same order (labelled "
                "by the same spec)"})
    ablation: str = field(default=",".join(ABLATIONS), metadata={"help": "comma-separated ablations to evaluate"})
    all_tokens_valid: bool = field(default=False, metadata={
        "help": "per-token hidden states (N, T, H) of --offline / --eval-data stored without hidden_tokens: every one "
                "of the T positions is a real token, so pool over all of them (without this flag such files are "
                "refused); passed to the AWR runs and the offline evaluation"})
    ray: str | None = field(default=None, metadata={
        "nargs": "?", "const": "local", "metavar": "ADDRESS",
        "help": "run each (arm, seed) as a Ray task: `--ray` starts a local Ray, `--ray ADDRESS` joins a cluster"})
    cpus_per_run: float = field(default=1.0, metadata={"help": "CPUs of each Ray task"})
    gpus_per_run: float = field(default=0.0, metadata={"help": "GPUs of each Ray task"})
    retries: int = field(default=3, metadata={"help": "times a Ray task whose worker died is retried (from its checkpoint)"})
    bootstrap_reps: int = field(default=5000, metadata={"help": "bootstrap resamples of each interval"})

    def ablations(self) -> tuple[str, ...]:
        names = tuple(a.strip() for a in self.ablation.split(",") if a.strip())
        if not names or "real" not in names or any(a not in ABLATIONS for a in names):
            raise InputError(f"--ablation {self.ablation!r}: expected a comma-separated subset of "
                             f"{','.join(ABLATIONS)} that includes real")
        return names

    def check(self) -> None:
        """Every flag before any work: the experiment's own, and `hsrl online`'s when the PPO arms run."""
        self.check_experiment()

    def offline_sets(self) -> tuple[str, ...]:
        """The --offline datasets (one, several, or none)."""
        return _folders(self.offline)

    def eval_sets(self) -> tuple[str, ...]:
        """The --eval-data datasets: none, or one per --offline."""
        return _folders(self.eval_data)

    def variant_names(self) -> list[str]:
        """The hidden arms' names of several --offline datasets: each folder's name (made unique)."""
        return variant_names(self.offline_sets())

    def check_experiment(self) -> None:
        offline, evals = self.offline_sets(), self.eval_sets()
        if not offline and not self.online:
            raise InputError("nothing to run: give --offline DATA (AWR arms), --online (PPO arms), or both")
        if not self.hidden:
            raise InputError("--no-hidden: the experiment runs the baseline arm (without hidden states) itself")
        for folder in offline:
            if not Path(folder).is_dir():
                raise FileNotFoundError(f"--offline {folder}: no such dataset folder")
        for folder in evals:
            if not Path(folder).is_dir():
                raise FileNotFoundError(f"--eval-data {folder}: no such dataset folder")
        if len(offline) > 1:
            resolved = [Path(f).resolve() for f in offline]
            if len(set(resolved)) < len(resolved):
                raise InputError("--offline: the same dataset twice; give each prompt variant once")
            if evals and len(evals) != len(offline):
                raise InputError(f"{len(offline)} --offline datasets, {len(evals)} --eval-data: give one --eval-data "
                                 f"per --offline (in the same order), or none to evaluate by rollouts in Craftax")
        elif len(evals) > 1:
            raise InputError(f"{len(evals)} --eval-data for {len(offline) or 'no'} --offline dataset: give one")
        for name in ("seeds", "awr_steps", "awr_batch_size", "awr_save_every", "eval_episodes", "eval_envs",
                     "bootstrap_reps"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.retries < 0 or self.cpus_per_run < 0 or self.gpus_per_run < 0:
            raise InputError("--retries, --cpus-per-run and --gpus-per-run must not be negative")
        self.ablations()
        if self.fusion not in FUSIONS:
            raise InputError(f"--fusion {self.fusion!r} is not one of {', '.join(FUSIONS)}")
        if self.online:  # `hsrl online`'s checks of a hidden-state arm (the control arm is planned by the experiment)
            OnlineConfig.check(dataclasses.replace(self, control=False))
        for i, folder in enumerate(offline):
            check_experiment_data(folder, evals[i] if evals else None, self.all_tokens_valid)
        if len(offline) > 1:
            check_same_data(offline)


def _folders(value) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def variant_names(folders) -> list[str]:
    """A short, unique name per dataset folder for its hidden arm (`awr-hidden-NAME`): the folder's name, with
    characters other than letters, digits, '.' and '_' as '_', numbered where two are the same."""
    import re

    names = [re.sub(r"[^A-Za-z0-9._]", "_", Path(f).resolve().name) or "data" for f in folders]
    return [f"{n}{names[:i].count(n) + 1}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def check_same_data(folders) -> None:
    """Prompt variants are labellings of one dataset: the same env and chunk files with the same rows (headers
    only); else one `InputError` naming the dataset that differs."""
    from hsrl.data import inspect_chunk, list_chunks

    def shape(folder):
        infos = [inspect_chunk(p) for p in list_chunks(folder)]
        return infos[0].meta.env_name, [(i.path.name, i.num_rows) for i in infos]

    first = shape(folders[0])
    for folder in folders[1:]:
        if shape(folder) != first:
            raise InputError(f"--offline {folder} is not a labelling of the same data as --offline {folders[0]} "
                             f"(its env, chunk files or rows differ): prompt variants label one dataset")


def check_experiment_data(offline: str, eval_data: str | None, all_tokens_valid: bool = False) -> None:
    """Everything an AWR arm or the offline evaluation would refuse, before the first run trains: return_to_go
    and hidden states in --offline, the same env, hidden width and extraction spec in --eval-data, and every value
    the reader checks (actions within the env's range, finite floats) in both (one `DataFileError` naming the file,
    field and first bad row)."""
    from hsrl.data import (DataFileError, check_chunk_values, check_token_counts, inspect_chunk, list_chunks,
                           spec_differences)
    from hsrl.rl.awr import check_data_keys

    check_data_keys(offline, hidden=True, all_tokens_valid=all_tokens_valid)
    first = inspect_chunk(list_chunks(offline)[0])
    width = first.fields["hidden_state"][0][-1]
    if eval_data is None and first.meta.spec_json is None:
        raise DataFileError(first.path, "meta", "hidden states without an extraction spec (imported from another tool: "
                                                "foreign), so the arms cannot be evaluated in Craftax with live states "
                                                "of the same spec; give --eval-data (held-out rows of the same data) "
                                                "to evaluate them offline")
    if eval_data is not None:
        other = inspect_chunk(list_chunks(eval_data)[0])
        for key in ("obs", "action", "hidden_state"):
            if key not in other.fields:
                raise DataFileError(other.path, key, "missing: --eval-data needs obs, action and hidden_state")
        check_token_counts(other, all_tokens_valid)
        if other.meta.env_name != first.meta.env_name:
            raise DataFileError(other.path, "meta", f"{other.meta.env_name} data; --offline holds "
                                                    f"{first.meta.env_name}")
        if other.fields["hidden_state"][0][-1] != width:
            raise DataFileError(other.path, "hidden_state", f"hidden width {other.fields['hidden_state'][0][-1]}; "
                                                            f"--offline's is {width} (another model or layer)")
        differ = spec_differences(first.meta.spec_json, other.meta.spec_json)
        if differ:
            raise DataFileError(other.path, "meta", "labelled by another extraction spec than --offline; fields "
                                                    f"that differ: {', '.join(differ)}")
    # the reader's own value checks (`hsrl.data.chunks.value_check`) of what training and evaluation read
    for folder, keys in ((offline, ("obs", "action", "return_to_go", "hidden_state")),
                         (eval_data, ("obs", "action", "hidden_state"))):
        if folder is None:
            continue
        for path in list_chunks(folder):
            check_chunk_values(path, keys)


def plan(config: ExperimentConfig):
    """The experiment's jobs: every (arm, seed), with its training and evaluation configs."""
    from hsrl.evaluate import EvalConfig
    from hsrl.experiment.runs import EVAL_DIR, TRAIN_DIR, Job
    from hsrl.rl.awr import TrainAWRConfig

    out = Path(config.out).resolve() / RUNS_DIR
    ablations = config.ablations()
    online_fields = {f.name for f in dataclasses.fields(OnlineConfig)}
    roles = ("baseline", "hidden") + (("control",) if config.control else ())
    offline, evals = config.offline_sets(), config.eval_sets()
    algos = (("awr",) if offline else ()) + (("ppo",) if config.online else ())
    # (arm, algo, role, training data, held-out data): one hidden arm per --offline dataset; the baseline and the
    # control read no LLM state, so they train on the first
    arms = []
    for algo, role in [(a, r) for a in algos for r in roles]:
        if algo == "awr" and role == "hidden" and len(offline) > 1:
            arms += [(f"awr-hidden-{name}", algo, role, data, evals[i] if evals else None)
                     for i, (name, data) in enumerate(zip(config.variant_names(), offline))]
        else:
            arms.append((f"{algo}-{role}", algo, role, offline[0] if offline else None, evals[0] if evals else None))
    jobs = []
    for arm, algo, role, data, eval_data in arms:
        hidden, control = role != "baseline", role == "control"
        fusion = config.fusion if hidden else "concat"  # the baseline has no hidden state to fuse
        # the control arm needs no ablations: the verdict compares its real score with the hidden arm's
        arm_ablations = ("real",) if control else ablations
        for seed in range(config.seed, config.seed + config.seeds):
            run_dir = out / arm / f"seed{seed}"
            train_out = str(run_dir / TRAIN_DIR)
            if algo == "awr":
                train = TrainAWRConfig(
                    str(Path(data).resolve()), out=train_out, hidden=hidden, control=control,
                    steps=config.awr_steps,
                    batch_size=config.awr_batch_size, lr=config.awr_lr, beta=config.awr_beta, seed=seed,
                    width=config.width, log_every=max(1, min(1000, config.awr_steps // 20)),
                    save_every=config.awr_save_every, all_tokens_valid=config.all_tokens_valid, fusion=fusion,
                    progress=False, tensorboard=False)
            else:
                values = {k: getattr(config, k) for k in online_fields}
                train = OnlineConfig(**{**values, "seed": seed, "hidden": hidden, "control": control, "fusion": fusion,
                                        "server": None if control else config.server, "out": train_out,
                                        "progress": False})
            evaluation = None if evals else EvalConfig(
                train_out, episodes=config.eval_episodes, envs=config.eval_envs, ablation=",".join(arm_ablations),
                max_episode_steps=config.eval_max_episode_steps, seed=config.eval_seed,
                device=config.device, out=str(run_dir / EVAL_DIR), progress=False)
            jobs.append(Job(arm=arm, algo=algo, hidden=hidden, seed=seed, run_dir=str(run_dir), train=train,
                            eval=evaluation, eval_data=None if eval_data is None else
                            str(Path(eval_data).resolve()), ablations=arm_ablations, eval_seed=config.eval_seed,
                            all_tokens_valid=config.all_tokens_valid))
    return jobs


def run_experiment(config: ExperimentConfig) -> dict:
    """Run (or resume) every job, then aggregate; returns the report written to experiment.json."""
    from tqdm.auto import tqdm

    from hsrl.experiment.report import write_report
    from hsrl.experiment.runs import finished, run_on_ray, run_sequential
    from hsrl.redact import public_config

    config.check_experiment()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = plan(config)
    skipped = sum(finished(j) is not None for j in jobs)  # also refuses finished runs of other settings
    bar = tqdm(total=len(jobs), initial=skipped, unit="run", desc="experiment", disable=not config.progress)
    t0 = time.perf_counter()

    def on_result(r):
        bar.update(1)

    todo = [j for j in jobs if finished(j) is None]
    if config.ray is not None and todo:
        run_on_ray(todo, config.ray, config.cpus_per_run, config.gpus_per_run, config.retries, on_result)
    else:
        run_sequential(todo, on_result)
    bar.close()
    results = [finished(j) for j in jobs]
    settings = {**public_config(config), "runs_skipped": skipped, "runs_done": len(todo),
                "seconds": time.perf_counter() - t0}
    return write_report(out, results, settings, config.bootstrap_reps, config.eval_seed)


def run_experiment_cli(config: ExperimentConfig) -> int:
    report = run_experiment(config)
    print(Path(config.out, "experiment.md").read_text())
    print(f"wrote {config.out}/experiment.json, experiment.md and {', '.join(report['figures'])}")
    return 0
