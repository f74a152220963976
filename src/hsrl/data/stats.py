"""Dataset statistics (`hsrl stats`) and the hidden-state normaliser, `normalize_hidden`.

`normalize_hidden(h, stats)` is the only place hidden states are normalised: offline training, the
server, online RL and evaluation all call it with the `HiddenStats` that travel with the checkpoint.
Statistics are computed in one streaming pass over the chunks with float64 accumulators, merging each
chunk's moments into the running ones (Chan et al.'s parallel variance), so memory does not grow with
the dataset.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hsrl.atomic import write_text_atomic
from hsrl.data.chunks import (
    DataFileError, META_KEY, ChunkReader, check_consecutive, check_same_row_shape, inspect_chunk, list_chunks, progress,
    starts_segment, to_time_env,
)
from hsrl.data.dataset import check_token_counts, read_pooled_hidden
from hsrl.llm.spec import check_spec, spec_differences, spec_hash
from hsrl.strict import dataclass_kwargs
from hsrl.errors import InputError

DEFAULT_STD_FLOOR = 1e-6
STATS_FILE = "stats.json"


@dataclass(frozen=True)
class StatsConfig:
    """Summarise a dataset folder and compute hidden-state normalisation statistics.

    One streaming pass over the chunks: samples, finished episodes, episode return and length
    (mean/std/min/max), per-achievement counts when recorded, and the per-dimension mean and std
    (floored) of pooled hidden states, tagged with the data's extraction spec. Per-token hidden states
    (`hsrl label --save-token-states`) count as their pooled rows (each row pooled over its `hidden_tokens`,
    as labelling pools). Prints a summary and saves the full result as JSON (`hidden_stats` in it is what
    training loads).
    """

    directory: str = field(metadata={"positional": True, "help": "dataset folder of chunk_NNNNNN.npz files"})
    out: str | None = field(default=None, metadata={"help": f"where to save the JSON (default: DIRECTORY/{STATS_FILE})"})
    std_floor: float = field(default=DEFAULT_STD_FLOOR,
                             metadata={"help": "lower bound on each hidden dimension's std, so constant dimensions "
                                               "do not divide by zero"})
    hidden: bool = field(default=True, metadata={"help": "compute hidden-state statistics when the files carry "
                                                         "hidden_state (default: on; --no-hidden: summary only)"})
    all_tokens_valid: bool = field(default=False, metadata={
        "help": "per-token hidden states (N, T, H) stored without hidden_tokens: every one of the T positions is a "
                "real token, so pool over all of them (without this flag such files are refused)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar over files"})

    def check(self) -> None:
        if not self.std_floor > 0:
            raise InputError(f"--std-floor must be positive, got {self.std_floor}")
        list_chunks(self.directory)  # the folder exists and holds chunks


@dataclass(frozen=True, eq=False)
class HiddenStats:
    """Per-dimension mean and floored std of (pooled) hidden states, and the spec they were computed under.

    `std` already has the floor applied (`max(std, std_floor)`), population std (ddof=0). `mean` and
    `std` are float32 (H,). JSON round-trips exactly.
    """

    mean: np.ndarray
    std: np.ndarray
    count: int
    spec_json: str | None = None
    std_floor: float = DEFAULT_STD_FLOOR

    def __post_init__(self):
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        if mean.ndim != 1 or std.shape != mean.shape:
            raise ValueError(f"mean and std must be (H,) of one shape, got {mean.shape} and {std.shape}")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
            raise ValueError("mean must be finite and std finite and positive")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @property
    def hidden_size(self) -> int:
        return int(self.mean.shape[0])

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "count": int(self.count),
                "spec_json": self.spec_json, "spec_hash": spec_hash(self.spec_json) if self.spec_json else None,
                "std_floor": float(self.std_floor), "hidden_size": self.hidden_size}

    @classmethod
    def from_dict(cls, d: Mapping) -> HiddenStats:
        """Statistics of a stored dict (`to_dict`); raises ValueError naming unknown or missing fields, or derived
        ones (hidden_size, spec_hash) that do not match."""
        kwargs = dataclass_kwargs(cls, d, derived=("hidden_size", "spec_hash"))
        kwargs["count"] = int(kwargs["count"])
        stats = cls(**kwargs)
        if "hidden_size" in d and d["hidden_size"] != stats.hidden_size:
            raise ValueError(f"HiddenStats: hidden_size {d['hidden_size']} but mean and std have {stats.hidden_size}")
        expected_hash = spec_hash(stats.spec_json) if stats.spec_json else None
        if "spec_hash" in d and d["spec_hash"] != expected_hash:
            raise ValueError(f"HiddenStats: spec_hash {d['spec_hash']!r} does not match spec_json ({expected_hash!r})")
        return stats

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> HiddenStats:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | os.PathLike) -> Path:
        return write_text_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> HiddenStats:
        """Read a saved HiddenStats, or the `hidden_stats` entry of an `hsrl stats` summary."""
        d = json.loads(Path(path).read_text())
        if "hidden_stats" in d:
            if d["hidden_stats"] is None:
                raise InputError(f"{path}: has no hidden-state statistics (the data carried no hidden_state)")
            d = d["hidden_stats"]
        return cls.from_dict(d)

    def check_spec(self, spec_json: str | None, allow_mismatch: bool = False) -> None:
        """Raise ValueError naming the differing fields if `spec_json` is not the spec of these stats (`check_spec`;
        with allow_mismatch only warn)."""
        check_spec(self.spec_json, spec_json, allow=allow_mismatch,
                   what="hidden-state statistics were computed under another extraction spec")


def normalize_hidden(h, stats):
    """z-score hidden states `(..., H)`: `(h - stats.mean) / stats.std` (std floored). numpy or JAX arrays.

    `stats` is a `HiddenStats`, or anything with `.mean` and `.std` arrays (inside `jax.jit`, a NamedTuple
    of traced arrays, so changing statistics do not recompile). float16/float32 input gives float32
    output. The last axis must be the statistics' hidden size.
    """
    size = stats.mean.shape[-1]
    if h.shape[-1] != size:
        raise ValueError(f"hidden states have size {h.shape[-1]} but the statistics have {size}")
    return (h - stats.mean) / stats.std


class RunningMoments:
    """Streaming count / mean / sum of squared deviations per dimension, float64, mergeable."""

    def __init__(self, dim: int):
        self.count = 0
        self.mean = np.zeros(dim, np.float64)
        self.m2 = np.zeros(dim, np.float64)

    def update(self, x: np.ndarray) -> None:
        """Merge a batch (n, dim) (Chan et al.: exact two-pass moments of the batch, then combine)."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"expected (n, {self.mean.shape[0]}), got {x.shape}")
        n = x.shape[0]
        if n == 0:
            return
        batch_mean = x.mean(axis=0, dtype=np.float64)
        dev = x.astype(np.float64) - batch_mean
        batch_m2 = np.einsum("ij,ij->j", dev, dev)
        self.merge(n, batch_mean, batch_m2)

    def merge(self, n: int, mean: np.ndarray, m2: np.ndarray) -> None:
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta * delta * (self.count * n / total)
        self.count = total

    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / self.count) if self.count else np.full_like(self.mean, np.nan)

    def hidden_stats(self, std_floor: float = DEFAULT_STD_FLOOR, spec_json: str | None = None) -> HiddenStats:
        if self.count == 0:
            raise ValueError("no hidden states seen")
        return HiddenStats(self.mean, np.maximum(self.std(), std_floor), self.count, spec_json, std_floor)


def _summary(x: np.ndarray) -> dict | None:
    if len(x) == 0:
        return None
    return {"mean": float(np.mean(x)), "std": float(np.std(x)), "min": float(np.min(x)), "max": float(np.max(x))}


def dataset_stats(directory: str | os.PathLike, *, std_floor: float = DEFAULT_STD_FLOOR, hidden: bool = True,
                  all_tokens_valid: bool = False, show_progress: bool = True) -> dict:
    """One streaming pass over a dataset folder: summary and hidden-state normalisation statistics.

    Episodes are counted at `done` rows; an episode's return is the undiscounted sum of its rewards,
    carried per environment across files (the collector starts every environment from a reset, so the
    first episode of each environment is whole). Episodes still running where a segment ends (a gap in the
    recording, `ChunkMeta.segment`) are cut there and counted in `cut_at_gaps`, never joined to the rows after
    the gap. `achievements` (per-row bool at done rows, if the files
    carry it) gives, per achievement, the number of finished episodes that unlocked it.

    Hidden statistics (if `hidden` and the files carry `hidden_state`) are over pooled states, one row per
    sample; per-token files are pooled while reading (`hsrl.data.dataset.read_pooled_hidden`: over each row's
    `hidden_tokens`; files without them only with `all_tokens_valid`). Files whose extraction specs differ are
    refused, naming the fields; so are datasets where only some files carry a key.
    """
    if std_floor <= 0:
        raise InputError(f"std_floor must be positive, got {std_floor}")
    files = list_chunks(directory)
    infos = [inspect_chunk(p) for p in files]
    check_consecutive(infos)
    first = infos[0]
    for info in infos[1:]:
        diff = spec_differences(first.meta.spec_json, info.meta.spec_json)
        if diff:
            raise DataFileError(info.path, META_KEY, f"extraction spec differs from {first.path.name} in "
                                                     f"fields {diff}; statistics of mixed specs are meaningless")
        if info.meta.achievement_names != first.meta.achievement_names:
            raise DataFileError(info.path, META_KEY, f"achievement_names differ from {first.path.name}")
    for key in ("achievements", "hidden_state"):
        have = [key in i.fields for i in infos]
        if any(have) and not all(have):
            missing = infos[have.index(False)].path
            raise DataFileError(missing, key, f"missing here but present in {sum(have)} of {len(infos)} files")
        if all(have):
            check_same_row_shape(infos, key)
    with_achievements = "achievements" in first.fields
    with_hidden = hidden and "hidden_state" in first.fields
    if with_hidden:
        for info in infos:  # before any work
            check_token_counts(info, all_tokens_valid)

    num_envs = first.meta.num_envs
    running = np.zeros(num_envs, np.float64)
    length = np.zeros(num_envs, np.int64)
    ep_returns, ep_lengths = [], []
    ach_counts = np.zeros(len(first.meta.achievement_names), np.int64)
    moments = None
    samples = 0
    keys = ["reward", "done"] + (["achievements"] if with_achievements else [])
    starts = starts_segment(infos)
    cut = 0
    for index, info in enumerate(progress(infos, "stats", show_progress)):
        if starts[index]:  # after a gap: the episodes still running before it are cut, not continued
            cut += int(np.count_nonzero(length))
            running[:] = 0.0
            length[:] = 0
        with ChunkReader(info.path) as reader:
            chunk = {k: reader.read(k) for k in keys}
            h = read_pooled_hidden(reader, all_tokens_valid=all_tokens_valid) if with_hidden else None
        reward, done = to_time_env(chunk["reward"], num_envs), to_time_env(chunk["done"], num_envs)
        for t in range(reward.shape[0]):  # vectorised over environments
            running += reward[t]
            length += 1
            ep_returns.append(running[done[t]])
            ep_lengths.append(length[done[t]])
            running[done[t]] = 0.0
            length[done[t]] = 0
        if with_achievements:
            ach_counts += chunk["achievements"][chunk["done"]].sum(axis=0)
        if h is not None:
            if moments is None:
                moments = RunningMoments(h.shape[1])
            moments.update(h)
        samples += len(chunk["reward"])
    ep_returns = np.concatenate(ep_returns) if ep_returns else np.zeros(0)
    ep_lengths = np.concatenate(ep_lengths) if ep_lengths else np.zeros(0)
    spec = first.meta.spec_json
    return {
        "directory": str(Path(directory)),
        "files": len(files),
        "env_name": first.meta.env_name,
        "obs_kind": first.meta.obs_kind,
        "num_envs": num_envs,
        "samples": samples,
        "steps_per_env": samples // num_envs,
        "episodes": int(len(ep_returns)),
        "running_at_end": int(np.count_nonzero(length)),
        "cut_at_gaps": cut,
        "episode_return": _summary(ep_returns),
        "episode_length": _summary(ep_lengths),
        "achievements": dict(zip(first.meta.achievement_names, ach_counts.tolist())) if with_achievements else None,
        "spec_json": spec,
        "spec_hash": spec_hash(spec) if spec else None,
        "hidden_stats": moments.hidden_stats(std_floor, spec).to_dict() if moments else None,
    }


def format_stats(stats: Mapping) -> str:
    """A short human-readable rendering of a `dataset_stats` summary."""
    lines = [f"{stats['directory']}: {stats['env_name']} ({stats['obs_kind']}), {stats['files']} files, "
             f"{stats['samples']} samples = {stats['steps_per_env']} steps x {stats['num_envs']} envs"]
    ret, length = stats["episode_return"], stats["episode_length"]
    gaps = f", cut at gaps in the recording: {stats['cut_at_gaps']}" if stats.get("cut_at_gaps") else ""
    lines.append(f"episodes finished: {stats['episodes']} (still running at the end: {stats['running_at_end']}{gaps})")
    if ret:
        lines.append(f"episode return: mean {ret['mean']:.4g} std {ret['std']:.4g} min {ret['min']:.4g} max {ret['max']:.4g}")
        lines.append(f"episode length: mean {length['mean']:.4g} std {length['std']:.4g} "
                     f"min {length['min']:.0f} max {length['max']:.0f}")
    if stats["achievements"] is not None:
        n = max(stats["episodes"], 1)
        unlocked = {k: v for k, v in stats["achievements"].items() if v}
        lines.append(f"achievements ({len(unlocked)} of {len(stats['achievements'])} unlocked; episodes, share):")
        lines += [f"  {k}: {v} ({v / n:.1%})" for k, v in sorted(unlocked.items(), key=lambda kv: -kv[1])]
    else:
        lines.append("achievements: not recorded in these files")
    hs = stats["hidden_stats"]
    if hs:
        std = np.asarray(hs["std"])
        lines.append(f"hidden states: size {hs['hidden_size']}, count {hs['count']}, spec {hs['spec_hash'] or '-'}, "
                     f"mean |mean| {np.mean(np.abs(hs['mean'])):.4g}, std median {np.median(std):.4g}, "
                     f"at floor {int(np.sum(std <= hs['std_floor']))}")
    else:
        lines.append("hidden states: none (not labelled, or --no-hidden)")
    return "\n".join(lines)
