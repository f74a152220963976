"""`hsrl returns` and `hsrl stats`: config dataclasses (their fields are the flags) and run functions."""

import json
from dataclasses import dataclass, field
from pathlib import Path

from hsrl.data.chunks import write_text_atomic
from hsrl.data.returns import add_returns
from hsrl.data.stats import DEFAULT_STD_FLOOR, STATS_FILE, dataset_stats, format_stats


@dataclass(frozen=True)
class ReturnsConfig:
    """Add discounted returns-to-go to every chunk of a dataset folder.

    Computes `return_to_go` (float32) per environment across consecutive chunk files, so an episode
    that spans files gets its full discounted return, and `return_truncated` (bool) for rows whose
    episode was still running at the end of the data. Each chunk is rewritten atomically; the gamma is
    recorded in its metadata. Rerun after collecting more chunks.
    """

    directory: str = field(metadata={"positional": True, "help": "dataset folder of chunk_NNNNNN.npz files"})
    gamma: float = field(default=0.99, metadata={"help": "discount factor, in [0, 1]"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar over files (default: on)"})


def run_returns(config: ReturnsConfig) -> int:
    summary = add_returns(config.directory, config.gamma, show_progress=config.progress)
    print(f"{summary['directory']}: return_to_go (gamma {summary['gamma']}) written to {summary['files']} files, "
          f"{summary['rows']} rows, {summary['truncated_rows']} in episodes still running at the end of the data")
    return 0


@dataclass(frozen=True)
class StatsConfig:
    """Summarise a dataset folder and compute hidden-state normalisation statistics.

    One streaming pass over the chunks: samples, finished episodes, episode return and length
    (mean/std/min/max), per-achievement counts when recorded, and the per-dimension mean and std
    (floored) of pooled hidden states, tagged with the data's extraction spec. Prints a summary and
    saves the full result as JSON (`hidden_stats` in it is what training loads).
    """

    directory: str = field(metadata={"positional": True, "help": "dataset folder of chunk_NNNNNN.npz files"})
    out: str | None = field(default=None, metadata={"help": f"where to save the JSON (default: DIRECTORY/{STATS_FILE})"})
    std_floor: float = field(default=DEFAULT_STD_FLOOR,
                             metadata={"help": "lower bound on each hidden dimension's std, so constant dimensions "
                                               "do not divide by zero"})
    hidden: bool = field(default=True, metadata={"help": "compute hidden-state statistics when the files carry "
                                                         "hidden_state (default: on; --no-hidden: summary only)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar over files (default: on)"})


def run_stats(config: StatsConfig) -> int:
    stats = dataset_stats(config.directory, std_floor=config.std_floor, hidden=config.hidden,
                          show_progress=config.progress)
    out = Path(config.out) if config.out else Path(config.directory) / STATS_FILE
    write_text_atomic(out, json.dumps(stats, indent=1))
    print(format_stats(stats))
    print(f"saved {out}")
    return 0
