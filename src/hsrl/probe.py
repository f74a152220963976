"""`hsrl probe DATA`: what do the hidden states know? Linear probes from `hidden_state` to ground truth
decoded from the symbolic observation (by `hsrl.text.decode_symbolic`, the decoder the prompts use).

Features: each inventory count and intrinsic (health, food, drink, energy; Craftax: also mana .. intelligence)
as regressions (test R^2); facing direction and day/night as classifications (test accuracy); for each
block and mob type, whether it is in view (accuracy) and, on the rows where it is, the row and column
offset of its nearest tile (R^2). Probes: ridge regression / ridge classifier on standardised inputs
(scikit-learn's RidgeCV / RidgeClassifierCV: the penalty picked from ALPHAS by efficient leave-one-out on
the training rows), fitted on the training episodes and scored on the held-out ones: rows are split by
episode (GroupShuffleSplit), so no episode is in both; a gap in the recording (`ChunkMeta.segment`) ends an episode.

Each feature is probed from three inputs of the same rows:
  hidden    the labelled hidden states (N, H); per-token files (N, T, H) by each row's pooled tokens
  floor     a random Gaussian projection of the symbolic observation to H dimensions (the map of
            `hsrl experiment`'s control arm, `hsrl.data.projection`, seeded by --seed; what a random
            embedding of the observation gives; when H >= the observation's length it keeps everything
            linear in it, so there it is a floor only for what a linear readout cannot reach)
  raw_obs   the symbolic observation itself, read by the same linear probe ("raw obs (linear)"). It is no
            ceiling: a feature a linear map of the observation cannot read (a nonlinear one, such as the
            nearest tile's offset, an argmin) scores low here, and the hidden state can beat it.

What the probes cannot tell: inputs are standardised (each dimension scaled to unit variance), so a probe
reads information at any scale; a high R^2 does not show that the information is large relative to the
state's norm. The states themselves are described by `state_measures` (common-direction share, spread/norm),
the centred effective rank and the mean pairwise cosine; `collapsed` judges them and `state_sentences`
builds the sentences probe.md and the quickstart report print.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hsrl.redact import public_config

INPUTS = ("hidden", "floor", "raw_obs")
LABELS = {"hidden": "hidden", "floor": "floor", "raw_obs": "raw obs (linear)"}  # column headers and chart legend
ALPHAS = tuple(10.0 ** np.arange(-2, 5))


@dataclass(frozen=True)
class ProbeConfig:
    """Linear probes from hidden states to features decoded from the symbolic observation, beside a random
    projection (floor) and a linear readout of the raw observation; writes probe.json, probe.md and probe.png."""

    data_dir: str = field(metadata={"positional": True, "help": "labelled dataset folder of a Symbolic env"})
    out: str = field(default="runs/probe", metadata={"help": "output folder"})
    test_fraction: float = field(default=0.25, metadata={"help": "share of episodes held out for scoring"})
    max_rows: int = field(default=20_000, metadata={"help": "rows used at most (a random subset of whole episodes)"})
    min_rows: int = field(default=20, metadata={"help": "skip a feature with fewer train or test rows than this"})
    seed: int = field(default=0, metadata={"help": "seed of the split, the subset and the random projection"})
    all_tokens_valid: bool = field(default=False, metadata={
        "help": "per-token hidden states (N, T, H) stored without hidden_tokens: every one of the T positions is a "
                "real token, so pool over all of them (without this flag such files are refused)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar over the probed features"})

    def check(self) -> None:
        from hsrl.data.chunks import list_chunks
        from hsrl.errors import InputError

        if not 0 < self.test_fraction < 1:
            raise InputError(f"--test-fraction must lie in (0, 1), got {self.test_fraction}")
        if self.max_rows < 2 or self.min_rows < 2:
            raise InputError("--max-rows and --min-rows must be at least 2")
        files = list_chunks(self.data_dir)  # the folder exists and holds chunks
        check_probe_data(files[0], self.all_tokens_valid, self.data_dir)
        from hsrl.data import load_dataset

        ds = load_dataset(self.data_dir, ["done"], show_progress=False)  # one small array per file
        check_episodes(dataset_episode_ids(ds), self.data_dir)


def check_episodes(groups: np.ndarray, data_dir) -> None:
    """Refuse (one line) data of fewer than 4 episodes: the probes are scored on held-out episodes."""
    from hsrl.errors import InputError

    episodes = len(np.unique(groups))
    if episodes < 4:
        raise InputError(f"{data_dir}: too few episodes to split by episode: {episodes} (need at least 4, some held "
                         "out); collect more steps or shorter episodes")


def check_probe_data(first, all_tokens_valid: bool, data_dir) -> None:
    """Refuse (one line) data probe cannot read, from the first file's headers: unlabelled, per-token states without
    counts (unless all_tokens_valid) or pixel observations (probe decodes symbolic ones)."""
    from hsrl.data import DataFileError, check_token_counts, inspect_chunk
    from hsrl.errors import InputError

    info = inspect_chunk(first)
    if info.meta.obs_kind != "symbolic":
        raise InputError(f"{data_dir}: probe decodes symbolic observations; this is {info.meta.obs_kind} data of "
                         f"{info.meta.env_name} (collect from a Symbolic env and label that)")
    if "hidden_state" not in info.fields:
        raise DataFileError(first, "hidden_state", "missing: label the data with `hsrl label` first")
    check_token_counts(info, all_tokens_valid)


def episode_ids(done: np.ndarray, num_envs: int, segment_start: np.ndarray | None = None) -> np.ndarray:
    """An id per row (time-major, row = t * num_envs + env): rows of one episode of one env share it. An episode
    begins after a `done` and at a row of `segment_start` ((N,) bool, `hsrl.data.chunks.segment_start_rows`): the
    rows on either side of a gap in the recording are never one episode."""
    from hsrl.data.chunks import episode_starts

    if len(done) % num_envs:
        raise ValueError(f"{len(done)} rows do not divide into {num_envs} environments")
    number = np.cumsum(episode_starts(done, num_envs, segment_start), axis=0) - 1  # the row's episode in its env
    return (number * num_envs + np.arange(num_envs)).reshape(-1)


def dataset_episode_ids(ds) -> np.ndarray:
    """`episode_ids` of a loaded dataset (with `done`), its files' gaps included."""
    from hsrl.data.chunks import inspect_chunk, segment_start_rows

    return episode_ids(ds["done"], ds.meta.num_envs, segment_start_rows([inspect_chunk(p) for p in ds.files]))


def features(sym: np.ndarray, variant: str) -> list[tuple[str, str, np.ndarray, np.ndarray | None]]:
    """(name, "regression" | "classification", target, row mask or None) of every probed feature."""
    from hsrl.text import decode_symbolic

    f = decode_symbolic(sym, variant)
    out = [(f"inventory/{n}", "regression", f["inventory"][:, i], None) for i, n in enumerate(f["inventory_names"])]
    out += [(n, "regression", f["intrinsics"][:, i], None) for i, n in enumerate(f["intrinsic_names"])]
    out += [("facing", "classification", f["direction"], None), ("night", "classification", f["night"], None)]
    rows, cols = f["block"].shape[1:]
    dr, dc = np.meshgrid(np.arange(rows) - rows // 2, np.arange(cols) - cols // 2, indexing="ij")
    dist = np.hypot(dr, dc).reshape(-1)

    def where(kind, name, present):  # present: (B, rows, cols) bool
        flat = present.reshape(len(present), -1)
        seen = flat.any(axis=1)
        nearest = np.argmin(np.where(flat, dist, np.inf), axis=1)
        return [(f"{kind}/{name}/in_view", "classification", seen, None),
                (f"{kind}/{name}/nearest_row", "regression", dr.reshape(-1)[nearest].astype(float), seen),
                (f"{kind}/{name}/nearest_col", "regression", dc.reshape(-1)[nearest].astype(float), seen)]

    for i, name in enumerate(f["block_names"]):
        out += where("block", name, f["block"] == i)
    for i, name in enumerate(f["mob_names"]):
        out += where("mob", name, f["mobs"][..., i])
    return out


def effective_rank(x: np.ndarray, rng, max_rows: int = 5000) -> float:
    x = x[rng.permutation(len(x))[:max_rows]].astype(np.float64)
    s = np.linalg.svd(x - x.mean(0), compute_uv=False)
    p = s / s.sum() if s.sum() > 0 else np.ones_like(s) / len(s)
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def mean_pairwise_cosine(x: np.ndarray, rng, max_rows: int = 2000) -> float:
    x = x[rng.permutation(len(x))[:max_rows]].astype(np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norm == 0):
        raise ValueError("a hidden state is all zeros: its cosine is undefined (a failed extraction?)")
    u = x / norm
    sim = u @ u.T
    n = len(u)
    return float((sim.sum() - np.trace(sim)) / (n * (n - 1)))


def state_measures(x: np.ndarray, rng, max_rows: int = 5000) -> dict:
    """How much the states (N, H) share, measured on the UNcentred states (on up to `max_rows` random rows):

    common_direction_share  s_1^2 / sum_i s_i^2, the singular values s of the uncentred matrix: the share of the
                            states' energy (sum of squared entries) along the one direction that holds most of it.
                            1 when every state lies on one line through the origin (a rank-1 matrix); about 1/H
                            for zero-mean isotropic states (a little more: the top eigenvalue of a sample
                            covariance sits above its mean). It is at least ||mean||^2 / mean ||x||^2.
    spread_to_norm          sqrt(mean_i ||x_i - mean||^2) / sqrt(mean_i ||x_i||^2): the RMS distance of the states
                            from their mean over their RMS norm, in [0, 1]. 0 when all states are equal, about 1
                            for zero-mean states; everything the states encode varies within this share of their
                            norm. (1 - spread_to_norm^2 = ||mean||^2 / mean ||x||^2 <= common_direction_share.)
    """
    from scipy.linalg import eigh

    x = x[rng.permutation(len(x))[:max_rows]].astype(np.float64)
    energy = float(np.sum(x * x))
    if energy == 0:
        raise ValueError("the hidden states are all zeros (a failed extraction?)")
    gram = x @ x.T if len(x) < x.shape[1] else x.T @ x  # the smaller side: its top eigenvalue is s_1^2
    top = float(eigh(gram, eigvals_only=True, subset_by_index=[len(gram) - 1, len(gram) - 1])[0])
    spread = float(np.sum((x - x.mean(0)) ** 2))
    return {"common_direction_share": min(top / energy, 1.0), "spread_to_norm": float(np.sqrt(spread / energy))}


# Collapse. The states are called collapsed when more than COLLAPSE_SHARE (99.9%) of their energy lies along one
# direction: whatever else they hold varies with an RMS under sqrt(0.001) ~ 3% of their norm. Ordinary states are far
# from it: zero-mean random ones put about 1/H of their energy along any one direction; a shared offset as large as
# their spread gives about 1/2, and even an offset ten times their spread only 1 - 1/101 ~ 0.99 (the tests' labelled
# states, intrinsics near their maximum, sit at 0.996 with spread/norm 0.08: anisotropic, their variation still
# visible). All-equal states plus 1e-3 noise per dimension are above it: 0.99994 at norm 1 and H = 64, above 0.999
# at norm >= 2 for H = 2560 (spread 1e-3 sqrt(H)). States with spread/norm under COLLAPSE_SPREAD = sqrt(1 -
# COLLAPSE_SHARE) always are (share >= 1 - spread_to_norm^2) and are nearly one vector; collapsed states with more
# spread vary along that one line (in scale or sign): a one-dimensional embedding.
COLLAPSE_SHARE = 0.999
COLLAPSE_SPREAD = float(np.sqrt(1 - COLLAPSE_SHARE))


def collapsed(measures: dict) -> bool:
    """Whether the states have collapsed: their common-direction share is above COLLAPSE_SHARE."""
    return measures["common_direction_share"] > COLLAPSE_SHARE


def state_sentences(measures: dict) -> list[str]:
    """The report's sentences on the states (probe.md and the quickstart report print these): whether they have
    collapsed, with the numbers, and, always, what probes on standardised inputs cannot tell. `measures` holds
    common_direction_share, spread_to_norm, mean_pairwise_cosine, effective_rank and hidden_size."""
    share, spread = measures["common_direction_share"], measures["spread_to_norm"]
    numbers = (f"common-direction share {share:.6f} (the share of their energy along one direction), spread/norm "
               f"{spread:.2g} (their RMS distance from their mean over their RMS norm), mean pairwise cosine "
               f"{measures['mean_pairwise_cosine']:.6f}")
    if collapsed(measures):
        shape = ("they are nearly one vector" if spread < COLLAPSE_SPREAD
                 else "they vary along that one line, in scale or sign")
        first = (f"**The hidden states have collapsed**: {numbers}; {shape} (collapsed: share above "
                 f"{COLLAPSE_SHARE}). Their effective rank ({measures['effective_rank']:.1f} of "
                 f"{measures['hidden_size']}) is of the centred states, where even tiny noise reads as full rank, "
                 "so it does not show this.")
    else:
        first = (f"The hidden states have not collapsed: {numbers} (collapsed would be a share above "
                 f"{COLLAPSE_SHARE}).")
    scale = ("Probes read standardised inputs (each dimension scaled to unit variance), so they read information "
             "at any scale: a high R^2 or accuracy does not show that the information is large relative to the "
             f"states' norm. Everything the states encode varies within spread/norm = {spread:.2g} of their norm, "
             "and a feature may take only a small part of that.")
    return [first, scale]


def _probe(kind: str, x_train, y_train, x_test, y_test) -> float:
    from sklearn.linear_model import RidgeClassifierCV, RidgeCV
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), (RidgeCV if kind == "regression" else RidgeClassifierCV)(alphas=ALPHAS))
    model.fit(x_train, y_train)
    pred = model.predict(x_test)
    return float(r2_score(y_test, pred) if kind == "regression" else accuracy_score(y_test, pred))


def load_probe_data(config: ProbeConfig):
    """The rows' observations, dones and pooled hidden states (per-token files pooled while reading), and the
    game variant, of data `config.check()` accepted."""
    from hsrl.data import load_dataset
    from hsrl.env import env_info

    ds = load_dataset(config.data_dir, ["obs", "done", "hidden_state"], all_tokens_valid=config.all_tokens_valid,
                      show_progress=config.progress)
    return ds, env_info(ds.meta.env_name).variant


def probe(config: ProbeConfig) -> dict:
    from sklearn.model_selection import GroupShuffleSplit
    from tqdm.auto import tqdm

    config.check()  # the data's kind, labels and episode count, before any work
    ds, variant = load_probe_data(config)
    groups = dataset_episode_ids(ds)
    rng = np.random.default_rng(config.seed)
    rows = np.arange(len(groups))
    if len(rows) > config.max_rows:  # whole episodes, in a random order, up to max_rows
        ids, sizes = np.unique(groups, return_counts=True)
        order = rng.permutation(len(ids))
        keep = ids[order[: max(4, int(np.searchsorted(np.cumsum(sizes[order]), config.max_rows, side="right")))]]
        rows = rows[np.isin(groups, keep)]
    sym = np.asarray(ds["obs"][rows], np.float32)
    hidden = np.asarray(ds["hidden_state"][rows], np.float32)
    groups = groups[rows]
    split = GroupShuffleSplit(n_splits=1, test_size=config.test_fraction, random_state=config.seed)
    train, test = next(split.split(sym, groups=groups))
    assert not set(groups[train]) & set(groups[test])
    from hsrl.data.projection import ObservationProjection

    floor = ObservationProjection(sym.shape[1:], hidden.shape[1], config.seed)(sym)  # the control arm's map
    inputs = {"hidden": hidden, "floor": floor, "raw_obs": sym}
    results, skipped = [], []
    probed = features(sym, variant)
    for name, kind, y, mask in tqdm(probed, desc="probe", unit="feature", disable=not config.progress,
                                    dynamic_ncols=True):
        tr = train if mask is None else train[mask[train]]
        te = test if mask is None else test[mask[test]]
        if len(tr) < config.min_rows or len(te) < config.min_rows:
            skipped.append({"feature": name, "reason": f"{len(tr)} train / {len(te)} test rows"})
            continue
        if len(np.unique(y[tr])) < 2 or len(np.unique(y[te])) < 2:
            skipped.append({"feature": name, "reason": "constant in the train or test rows"})
            continue
        row = {"feature": name, "kind": kind, "metric": "R2" if kind == "regression" else "accuracy",
               "train_rows": int(len(tr)), "test_rows": int(len(te))}
        for key, x in inputs.items():
            row[key] = _probe(kind, x[tr], y[tr], x[te], y[te])
        if kind == "classification":
            values, counts = np.unique(y[tr], return_counts=True)
            row["majority"] = float(np.mean(y[te] == values[np.argmax(counts)]))
        results.append(row)
    states = {"effective_rank": effective_rank(hidden, rng), "mean_pairwise_cosine": mean_pairwise_cosine(hidden, rng),
              **state_measures(hidden, rng)}
    states["collapsed"] = collapsed(states)
    report = {"data_dir": str(config.data_dir), "env": ds.meta.env_name, "spec_json": ds.meta.spec_json,
              "rows": int(len(rows)), "episodes": int(len(np.unique(groups))),
              "train_episodes": int(len(np.unique(groups[train]))), "test_episodes": int(len(np.unique(groups[test]))),
              "hidden_size": int(hidden.shape[1]), **states, "config": public_config(config), "features": results,
              "skipped": skipped}
    _write(Path(config.out), report)
    return report


def markdown(report: dict) -> str:
    head = " | ".join(LABELS[k] for k in INPUTS)
    lines = [f"# Probes of {report['data_dir']}", "",
             f"{report['env']}, {report['rows']} rows in {report['episodes']} episodes ({report['train_episodes']} "
             f"train / {report['test_episodes']} test, split by episode). Hidden size {report['hidden_size']}, "
             f"effective rank {report['effective_rank']:.1f} (of the centred states).", "",
             " ".join(state_sentences(report)),
             "", "Test score of a linear probe (R^2 for numbers, accuracy for classes) from the hidden state, from a "
             "random projection of the observation to the same width (floor), and from the raw observation (raw obs "
             "(linear)). The raw observation's column is a linear readout, not a ceiling: a feature a linear map of "
             "the observation cannot read (such as a nearest tile's offset) scores low there, and the hidden state "
             "can beat it.",
             "", f"| feature | metric | {head} | majority class | test rows |", "|---|---|---|---|---|---|---|"]
    for r in report["features"]:
        scores = " | ".join(f"{r[k]:.3f}" for k in INPUTS)
        majority = f"{r['majority']:.3f}" if "majority" in r else ""
        lines.append(f"| {r['feature']} | {r['metric']} | {scores} | {majority} | {r['test_rows']} |")
    if report["skipped"]:
        lines += ["", "Not probed: " + "; ".join(f"{s['feature']} ({s['reason']})" for s in report["skipped"]) + "."]
    return "\n".join(lines) + "\n"


def _chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hsrl.atomic import atomic_path

    rows = report["features"]
    fig, ax = plt.subplots(figsize=(8, 0.28 * len(rows) * 1.2 + 1.2))
    y = np.arange(len(rows))
    for i, (key, color) in enumerate(zip(INPUTS, ("#4c72b0", "#bbbbbb", "#55a868"))):
        ax.barh(y + (i - 1) * 0.27, [max(r[key], -0.1) for r in rows], height=0.27, color=color, label=LABELS[key])
    ax.set_yticks(y, [f"{r['feature']} ({r['metric']})" for r in rows], fontsize="small")
    ax.invert_yaxis()
    ax.set_xlim(-0.1, 1)
    ax.set_xlabel("test score (R^2 or accuracy; R^2 below -0.1 drawn at -0.1)")
    ax.legend(loc="lower right")
    ax.set_title(f"hidden states: effective rank {report['effective_rank']:.1f} of {report['hidden_size']} (centred), "
                 f"common-direction share {report['common_direction_share']:.6f},\nspread/norm "
                 f"{report['spread_to_norm']:.2g}, mean pairwise cosine {report['mean_pairwise_cosine']:.6f}"
                 + (": COLLAPSED" if report["collapsed"] else ""), fontsize="small")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def _write(out: Path, report: dict) -> None:
    from hsrl.atomic import write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "probe.json", json.dumps(report, indent=1))
    write_text_atomic(out / "probe.md", markdown(report))
    _chart(report, out / "probe.png")


def run_probe(config: ProbeConfig) -> int:
    report = probe(config)
    print(markdown(report))
    print(f"wrote {config.out}/probe.json, probe.md, probe.png")
    return 0
