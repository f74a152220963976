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
    normalisation: more input features, no new information; with --history K prompts, of the same K previous
    observations and actions; --control-map relu: random ReLU features; --no-control leaves it out). Prompt variants:
    `--offline A --offline B ...` (labellings of the same data with other prompts: --history, --template,
    --prompt-template) gives each its own hidden arm (awr-hidden-A, awr-hidden-B), with one baseline and one
    control (on the first), the same verdict for each and a pairwise comparison of the variants. Seeds are --seed ..
    --seed + --seeds - 1. Every trained policy is evaluated on Craftax by `hsrl eval`'s code (--eval-episodes
    episodes, seed --eval-seed, the same for every run), or, with --eval-data, offline on held-out labelled
    data through the same ablation functions.

    The verdict answers, on the headline metric: does the policy use its hidden state (real - shuffled, the
    mean over seeds, paired per seed: Student t interval and exact sign-flip test), does it beat the baseline,
    does it beat the control (a typical seed: P(hidden > other) by the Brunner-Munzel rank test with permutation
    p, which holds when an arm's seeds split; the difference of means is shown as a description). The answers of
    every hidden arm (and the prompt-variant pairs) are one family, Holm-corrected. real - zero is reported as
    sensitivity to the input only. rliable's mean / IQM with bootstrap intervals stay in the tables (descriptive). Each
    run's scores on two halves of its evaluation show how much of the spread is evaluation noise. Writes
    OUT/experiment.json, OUT/experiment.md, intervals.png, comparisons.png, achievements.png, curves.png, and one
    folder per run under OUT/runs/ARM/seedS. Rerunning skips finished runs and resumes AWR runs from their
    checkpoints. The seeds of an arm train as one compiled program (--seeds-per-program, --seed-axis;
    `hsrl.rl.awr_seeds`), in this process, or with --ray one Ray task per program. Every input is checked before the
    first run trains.
    """

    offline: tuple[str, ...] | str | None = field(default=None, metadata={
        "repeat": True, "metavar": "DATA",
        "help": "labelled dataset folder (with return_to_go): run the AWR arms on it; repeat it (--offline A "
                "--offline B) to compare prompt variants, each its own hidden arm"})
    online: bool = field(default=False, metadata={"help": "run the online PPO arms (with the `hsrl online` flags)"})
    seeds: int = field(default=8, metadata={
        "help": "seeds per arm: 8 is the fewest at which every answer has 80%% power for a clear effect (a use gap of "
                "1.5 and arms 2 standard deviations apart) with the family's error controlled (simulated in "
                "tests/test_experiment_stats.py); with 3 no comparison of arms can be claimed, and below 6 a use "
                "claim rests on the t interval alone"})
    margin: str = field(default="10%", metadata={
        "help": "equivalence margin of the headline metric: a number in its units, or P%% of the baseline arm's mean; "
                "each question then has three outcomes: an effect, equivalent (TOST: the 90%% "
                "interval inside +-margin: 'the policy does not use its state by more than the margin'), or "
                "inconclusive; 'none' turns equivalence off. The arms' equivalence is on P(hidden > other), "
                "--rank-margin"})
    rank_margin: float = field(default=0.2, metadata={
        "help": "equivalence margin of the arm comparisons on P(hidden > other): equivalent when it lies within "
                "1/2 +- this (0.2: a typical seed of either arm beats the other's at most 70%% of the time)"})
    plan: bool = field(default=False, metadata={
        "help": "print the seeds per arm each question needs (80%% power for the margin, and for equivalence "
                "within it) from the runs already finished in --out (a pilot), without training anything; every "
                "report has this plan too"})
    seeds_max: int | None = field(default=None, metadata={
        "help": "with --sequential: the most seeds per arm; seeds are added in rounds of --seeds"})
    sequential: bool = field(default=False, metadata={
        "help": "add seeds in rounds of --seeds up to --seeds-max and stop as soon as every question has an answer "
                "(an effect, or equivalence within the margin); each look claims at its share of the error rate "
                "(linear alpha spending over the looks), so the chance of any false claim stays at 5%%"})
    control: bool = field(default=True, metadata={
        "help": "run the control arm: the hidden-state network fed a fixed random projection of the observation "
                "and, where the hidden arm's prompts show --history K, of its K previous observations and actions "
                "(--no-control leaves it out, and the verdict cannot say whether the state adds information)"})
    control_map: str = field(default="linear", metadata={
        "help": "the control arm's map to the hidden width: linear (a fixed random projection) or relu (fixed "
                "random ReLU features, relu(x W + b)); recorded in its checkpoints and named in result.json"})
    out: str = field(default="runs/experiment", metadata={"help": "experiment folder (rerun to resume)"})
    awr_steps: int = field(default=20_000, metadata={"help": "AWR gradient steps per run"})
    awr_batch_size: int = field(default=256, metadata={"help": "AWR samples per gradient step"})
    awr_lr: float = field(default=3e-4, metadata={"help": "AWR Adam learning rate"})
    awr_beta: float = field(default=10.0, metadata={"help": "AWR temperature"})
    awr_save_every: int = field(default=2000, metadata={"help": "AWR steps between checkpoints (resume points)"})
    eval_episodes: int = field(default=32, metadata={
        "help": "evaluation episodes per ablation and run, as in `hsrl eval`: a fixed quota per environment "
                "(environment i plays (episodes + i) // envs, as SB3's evaluate_policy), each played to its end (the "
                "report says how much of the spread is evaluation noise; raise it when that share is large)"})
    eval_envs: int = field(default=8, metadata={
        "help": "parallel evaluation environments (at most --eval-episodes are run)"})
    eval_seed: int = field(default=1000, metadata={"help": "evaluation seed, the same for every run and ablation"})
    eval_max_episode_steps: int | None = field(default=None, metadata={
        "help": "cut evaluation episodes at this length (default: Craftax's 10000)"})
    eval_data: tuple[str, ...] | str | None = field(default=None, metadata={
        "repeat": True, "metavar": "DATA",
        "help": "evaluate offline on this held-out labelled dataset (mean probability of its actions) instead "
                "of rollouts in Craftax; with several --offline, one --eval-data each, in the same order (labelled "
                "by the same spec). Refused before any arm trains if a chunk file has the same bytes as one of "
                "--offline's or comes from the same collection (the same `hsrl collect` settings and seed)"})
    ablation: str = field(default=",".join(ABLATIONS), metadata={
        "help": "comma-separated ablations to evaluate; text:FILE adds one per line of FILE (that text's state in "
                "every row's place, through the data's prompt program and model)"})
    eval_source: str | None = field(default=None, metadata={
        "metavar": "DATA",
        "help": "held-out labelled data of another extraction spec (e.g. forecast labels of the --eval-data rows): "
                "every hidden arm trained on another spec is also scored with these states (a cross-source "
                "evaluation, ablation source:NAME in the report), so a hindsight arm (an upper bound) is scored "
                "with the states a forecaster could give while playing; needs --eval-data"})
    all_tokens_valid: bool = field(default=False, metadata={
        "help": "per-token hidden states (N, T, H) of --offline / --eval-data stored without hidden_tokens: every one "
                "of the T positions is a real token, so pool over all of them (without this flag such files are "
                "refused); passed to the AWR runs and the offline evaluation"})
    ray: str | None = field(default=None, metadata={
        "nargs": "?", "const": "local", "metavar": "ADDRESS",
        "help": "run each group of seeds (--seeds-per-program) as a Ray task: `--ray` starts a local Ray, `--ray "
                "ADDRESS` joins a cluster"})
    cpus_per_run: float = field(default=1.0, metadata={"help": "CPUs of each Ray task"})
    gpus_per_run: float = field(default=0.0, metadata={"help": "GPUs of each Ray task"})
    retries: int = field(default=3, metadata={"help": "times a Ray task whose worker died is retried (from its checkpoint)"})
    seeds_per_program: int | None = field(default=None, metadata={
        "help": "seeds of one arm trained together as one compiled program (one data load, one compile; each seed "
                "still writes its own run folder): default all of an arm's seeds, split further where a GPU's memory "
                "cannot hold them (XLA's memory analysis of one seed's program, within 80%% of the device's limit "
                "after the data); 1 trains each seed on its own. With --ray each program is one task: give a smaller "
                "number to spread an arm over several GPUs or machines. AWR arms; online PPO arms where `hsrl online` "
                "trains seeds in groups"})
    seed_axis: str = field(default="auto", metadata={
        "help": "how an AWR program runs its seeds: loop (one seed's compiled program for each seed in turn: each "
                "seed's numbers are its single run's bit for bit), vmap (batched: every matrix product as wide as the "
                "seeds, what fills a GPU; equal to single runs to float rounding), or auto (loop on CPU, where wider "
                "products run no faster, vmap on accelerators)"})
    bootstrap_reps: int = field(default=5000, metadata={"help": "bootstrap resamples of each interval"})

    def ablations(self) -> tuple[str, ...]:
        """The ablations each hidden arm is evaluated with: `hsrl.evaluate.parse_ablations` (text:FILE expands to one
        text:FILE:LINE per line), real among them."""
        from hsrl.evaluate import parse_ablations

        names = tuple(parse_ablations(self.ablation))
        if "real" not in names:
            raise InputError(f"--ablation {self.ablation!r}: expected a comma-separated subset of "
                             f"{','.join(ABLATIONS)} (and text:FILE) that includes real")
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
        from hsrl.experiment.report import margin_of

        try:
            margin_of(self.margin, 1.0)
        except ValueError as e:
            raise InputError(f"--margin: {e}") from None
        if not 0 < self.rank_margin < 0.5:
            raise InputError(f"--rank-margin must lie between 0 and 0.5 (P(hidden > other) within 1/2 +- it), got "
                             f"{self.rank_margin}")
        if self.sequential and (self.seeds_max is None or self.seeds_max <= self.seeds):
            raise InputError(f"--sequential adds rounds of --seeds {self.seeds} up to --seeds-max: give a --seeds-max "
                             f"above {self.seeds}")
        if self.seeds_max is not None and not self.sequential:
            raise InputError("--seeds-max is the sequential design's limit: add --sequential, or give --seeds alone")
        if self.retries < 0 or self.cpus_per_run < 0 or self.gpus_per_run < 0:
            raise InputError("--retries, --cpus-per-run and --gpus-per-run must not be negative")
        if self.seeds_per_program is not None and self.seeds_per_program < 1:
            raise InputError(f"--seeds-per-program must be at least 1, got {self.seeds_per_program}")
        if self.seed_axis not in ("auto", "loop", "vmap"):
            raise InputError(f"--seed-axis must be auto, loop or vmap, got {self.seed_axis!r}")
        self.ablations()
        if self.fusion not in FUSIONS:
            raise InputError(f"--fusion {self.fusion!r} is not one of {', '.join(FUSIONS)}")
        from hsrl.data.projection import DEFAULT_MAP, check_control_map

        check_control_map(self.control_map, self.control)
        if self.online:  # `hsrl online`'s checks of a hidden-state arm (the control arm is planned by the experiment)
            OnlineConfig.check(dataclasses.replace(self, control=False, control_map=DEFAULT_MAP))
            if self.control and self.history and "Pixels" in self.env:
                raise InputError(f"the control arm matched to --history {self.history} reads previous symbolic "
                                 f"observations and projects symbolic observations only: use a Symbolic --env, or "
                                 f"--no-control")
        for i, folder in enumerate(offline):
            check_experiment_data(folder, evals[i] if evals else None, self.all_tokens_valid)
        if self.eval_source is not None:
            check_eval_source(self)
        for i, held in enumerate(evals):  # prompt variants label one dataset: each --eval-data is held out from all
            for j, folder in enumerate(offline):
                if i != j:
                    check_held_out(folder, held)
        if offline and self.control:
            check_control_data(offline[0])
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


def check_control_data(offline: str) -> None:
    """The control arm's data: one labelled with --history K gives a control of the K previous steps, which reads
    symbolic observations only (`hsrl.data.projection`); refused for pixel data before any arm trains."""
    from hsrl.data import inspect_chunk, list_chunks
    from hsrl.data.projection import spec_history

    first = inspect_chunk(list_chunks(offline)[0])
    k = spec_history(first.meta.spec_json)
    if k and first.meta.obs_kind != "symbolic":
        raise InputError(f"--offline {offline} is labelled with --history {k}: the control arm matched to it reads the "
                         f"previous observations, and projects symbolic observations only, not "
                         f"{first.meta.obs_kind}; use --no-control")


def collection_of(meta) -> str | None:
    """A phrase naming the collection a chunk came from, from what its meta records (`ChunkMeta.extra`): `hsrl
    collect`'s env, environments, seed, policy and episode cut, or the online run whose trajectories it saved; None
    where nothing says (imported data, hand-made files): then only a file's bytes tell two datasets apart."""
    from hsrl.rl.trajectories import SOURCE

    extra = meta.extra if isinstance(meta.extra, dict) else {}
    if extra.get("source") == SOURCE and extra.get("run"):
        return f"the trajectories of `hsrl online` run {extra['run']}"
    if "seed" in extra and "policy" in extra:
        cut = extra.get("max_episode_steps")
        return (f"`hsrl collect` of {meta.env_name} with {meta.num_envs} envs, seed {extra['seed']}, policy "
                f"{extra['policy']}" + (f", episodes cut at {cut}" if cut is not None else ""))
    return None


def check_held_out(offline: str, eval_data: str) -> None:
    """--eval-data must be held out from --offline: no chunk file with the same bytes (a blake2b digest of the file,
    compared where sizes match) and no chunk of the same collection (`collection_of`: the same recorded settings make
    the same episodes). One `InputError` naming the file."""
    from hsrl.data import inspect_chunk, list_chunks
    from hsrl.data.label import file_digest

    train = list_chunks(offline)
    sizes: dict[int, list[Path]] = {}
    for path in train:
        sizes.setdefault(path.stat().st_size, []).append(path)
    collections = {c: path for path in reversed(train) if (c := collection_of(inspect_chunk(path).meta)) is not None}
    digests: dict[Path, str] = {}
    for path in list_chunks(eval_data):
        mine = None
        for other in sizes.get(path.stat().st_size, []):
            mine = mine or file_digest(path)
            if other not in digests:
                digests[other] = file_digest(other)
            if mine == digests[other]:
                raise InputError(f"--eval-data {path} is also in --offline {offline} (same bytes as {other.name}): "
                                 f"evaluation data must be held out")
        collection = collection_of(inspect_chunk(path).meta)
        if collection in collections:
            raise InputError(f"--eval-data {path} comes from the same collection as --offline {offline} "
                             f"({collections[collection].name}: {collection}): evaluation data must be held out "
                             f"(collect it with another --seed)")


def check_eval_source(config: ExperimentConfig) -> None:
    """--eval-source: a labelled held-out dataset (offline evaluation only, held out from every --offline) of the
    same env and observations as --eval-data, whose states some hidden arm was not trained on."""
    from hsrl.data import DataFileError, check_chunk_values, inspect_chunk, list_chunks

    source, evals = config.eval_source, config.eval_sets()
    if not evals:
        raise InputError("--eval-source scores the hidden arms offline with another spec's states: give --eval-data "
                         "too (the arms' own held-out rows)")
    if not Path(source).is_dir():
        raise FileNotFoundError(f"--eval-source {source}: no such dataset folder")
    for folder in config.offline_sets():
        check_held_out(folder, source)
    other, own = inspect_chunk(list_chunks(source)[0]), inspect_chunk(list_chunks(evals[0])[0])
    if "hidden_state" not in other.fields or other.meta.spec_json is None:
        raise DataFileError(other.path, "hidden_state", "--eval-source needs data labelled by an extraction spec")
    if other.meta.env_name != own.meta.env_name or other.fields["obs"][0] != own.fields["obs"][0]:
        raise DataFileError(other.path, "obs", f"{other.meta.env_name} observations {other.fields['obs'][0]}; "
                                               f"--eval-data holds {own.meta.env_name} {own.fields['obs'][0]}")
    check_chunk_values(list_chunks(source)[0], ("obs", "action", "hidden_state"))


def upper_bound_arms(jobs) -> tuple[str, ...]:
    """The AWR hidden arms of `plan`'s jobs whose training states saw the future (hindsight labels: `future` > 0 in
    the data's spec), the ladder's top rung."""
    from hsrl.data import inspect_chunk, list_chunks
    from hsrl.llm.spec import future_steps

    data = {j.arm: j.train.data_dir for j in jobs if j.algo == "awr" and j.hidden and not j.train.control}
    return tuple(arm for arm, folder in data.items()
                 if future_steps(inspect_chunk(list_chunks(folder)[0]).meta.spec_json))


def check_experiment_data(offline: str, eval_data: str | None, all_tokens_valid: bool = False) -> None:
    """Everything an AWR arm or the offline evaluation would refuse, before the first run trains: return_to_go
    and hidden states in --offline, --eval-data held out from it (`check_held_out`) with the same env, hidden width
    and extraction spec, and every value the reader checks (actions within the env's range, finite floats) in both
    (one `DataFileError` naming the file, field and first bad row)."""
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
    if eval_data is None:
        from hsrl.llm.spec import HINDSIGHT_WHY, LIVE_TEXT_WHY, future_steps, text_source

        if text_source(first.meta.spec_json) != "hsrl":
            raise DataFileError(first.path, "meta", f"extraction spec with text_source 'import': {LIVE_TEXT_WHY}; or "
                                                    f"give --eval-data (held-out rows of the same data) to evaluate "
                                                    f"the arms offline")
        if future_steps(first.meta.spec_json):
            raise DataFileError(first.path, "meta", f"hindsight labels (--future {future_steps(first.meta.spec_json)})"
                                                    f": {HINDSIGHT_WHY}; give --eval-data (held-out rows labelled "
                                                    f"the same way) to evaluate the arms offline")
    if eval_data is not None:
        check_held_out(offline, eval_data)
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
    from hsrl.data.projection import DEFAULT_MAP
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
        control_map = config.control_map if control else DEFAULT_MAP  # the map is the control arm's alone
        # the control arm needs no ablations: the verdict compares its real score with the hidden arm's
        arm_ablations = ("real",) if control else ablations
        eval_source = _eval_source(config, role, eval_data)  # per arm: it reads two chunks' specs
        for seed in range(config.seed, config.seed + config.seeds):
            run_dir = out / arm / f"seed{seed}"
            train_out = str(run_dir / TRAIN_DIR)
            if algo == "awr":
                train = TrainAWRConfig(
                    str(Path(data).resolve()), out=train_out, hidden=hidden, control=control,
                    control_map=control_map, steps=config.awr_steps,
                    batch_size=config.awr_batch_size, lr=config.awr_lr, beta=config.awr_beta, seed=seed,
                    width=config.width, log_every=max(1, min(1000, config.awr_steps // 20)),
                    save_every=config.awr_save_every, all_tokens_valid=config.all_tokens_valid, fusion=fusion,
                    progress=False, tensorboard=False)
            else:
                values = {k: getattr(config, k) for k in online_fields}
                values["control_map"] = control_map
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
                            all_tokens_valid=config.all_tokens_valid,
                            eval_source=eval_source))
    return jobs


def _eval_source(config: ExperimentConfig, role: str, eval_data: str | None) -> str | None:
    """A hidden arm's --eval-source, where its states differ from the arm's own held-out data's (else that
    evaluation would repeat its own)."""
    if config.eval_source is None or role != "hidden" or eval_data is None:
        return None
    from hsrl.data import inspect_chunk, list_chunks, spec_differences

    def spec(folder):
        return inspect_chunk(list_chunks(folder)[0]).meta.spec_json

    if not spec_differences(spec(eval_data), spec(config.eval_source)):
        return None
    return str(Path(config.eval_source).resolve())


def run_experiment(config: ExperimentConfig) -> dict:
    """Run (or resume) every job, then aggregate; returns the report written to experiment.json. With
    --sequential, seeds come in rounds and the looks stop as soon as every question is answered
    (`hsrl.experiment.sequential`)."""
    from tqdm.auto import tqdm

    from hsrl.experiment import sequential
    from hsrl.experiment.report import aggregate, write_report
    from hsrl.experiment.runs import finished, run_on_ray, run_sequential
    from hsrl.experiment.stats import ALPHA
    from hsrl.redact import public_config

    config.check_experiment()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    counts = sequential.looks(config.seeds, config.seeds_max) if config.sequential else [config.seeds]
    levels = sequential.look_levels(counts, ALPHA) if config.sequential else [ALPHA]
    t0, margins, done = time.perf_counter(), None, 0
    for look, (k, level) in enumerate(zip(counts, levels)):
        jobs = plan(dataclasses.replace(config, seeds=k))
        if look == 0:
            upper_bounds = upper_bound_arms(jobs)  # read once: every look has the same arms
        todo = [j for j in jobs if finished(j) is None]  # also refuses finished runs of other settings
        done += len(todo)
        bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), unit="run", disable=not config.progress,
                   desc="experiment" if not config.sequential else f"experiment, look {look + 1} ({k} seeds)")
        if config.ray is not None and todo:
            run_on_ray(todo, config.ray, config.cpus_per_run, config.gpus_per_run, config.retries,
                       lambda r: bar.update(1), config.seeds_per_program, config.seed_axis)
        else:
            run_sequential(todo, lambda r: bar.update(1), config.seeds_per_program, config.seed_axis)
        bar.close()
        results = [finished(j) for j in jobs]
        agg = aggregate(results, config.bootstrap_reps, config.eval_seed, margin=config.margin,
                        rank_margin=config.rank_margin, alpha=level, margins=margins,
                        upper_bounds=upper_bounds)
        margins = agg["margins"]  # fixed at the first look
        if config.sequential and (sequential.answered(agg["claims"]) or look == len(counts) - 1):
            agg["sequential"] = sequential.record(counts, levels, look, agg["claims"])
            break
    settings = {**public_config(config), "runs_skipped": len(jobs) - done, "runs_done": done,
                "seconds": time.perf_counter() - t0}
    return write_report(out, results, settings, agg)


def plan_from_finished(config: ExperimentConfig) -> str:
    """`--plan`: the seeds plan of the runs already finished in --out (a pilot), as markdown; trains nothing."""
    from hsrl.experiment import plan as seeds
    from hsrl.experiment.report import aggregate
    from hsrl.experiment.runs import finished

    config.check_experiment()
    most = config.seeds_max if config.sequential else config.seeds
    jobs = plan(dataclasses.replace(config, seeds=most))
    results = [r for r in map(finished, jobs) if r is not None]
    arms = {r["arm"] for r in results}
    if not results or not any("-hidden" in a for a in arms):
        raise InputError(f"--plan: no finished hidden-arm runs in {config.out}: run a pilot first (the same command "
                         f"without --plan, for example with --seeds 4), then plan from it")
    agg = aggregate(results, config.bootstrap_reps, config.eval_seed, margin=config.margin,
                    rank_margin=config.rank_margin, upper_bounds=upper_bound_arms(jobs))
    return "\n".join(seeds.lines(agg["plan"]))


def run_experiment_cli(config: ExperimentConfig) -> int:
    if config.plan:
        print(plan_from_finished(config))
        return 0
    report = run_experiment(config)
    print(Path(config.out, "experiment.md").read_text())
    print(f"wrote {config.out}/experiment.json, experiment.md and {', '.join(report['figures'])}")
    return 0
