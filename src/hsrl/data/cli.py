"""Run functions of `hsrl returns`, `hsrl stats` and `hsrl import` (configs: `hsrl.data.returns.ReturnsConfig`,
`hsrl.data.stats.StatsConfig`, `hsrl.data.importer.ImportConfig`)."""

import json
from pathlib import Path

from hsrl.atomic import write_text_atomic
from hsrl.data.returns import ReturnsConfig, add_returns
from hsrl.data.importer import ImportConfig, format_summary, import_trajectories
from hsrl.data.stats import STATS_FILE, StatsConfig, dataset_stats, format_stats


def run_returns(config: ReturnsConfig) -> int:
    summary = add_returns(config.directory, config.gamma, show_progress=config.progress)
    print(f"{summary['directory']}: return_to_go (gamma {summary['gamma']}) written to {summary['files']} files, "
          f"{summary['rows']} rows, {summary['truncated_rows']} in episodes still running at the end of the data"
          + (" or of a segment (a gap in the recording)" if summary.get("segments", 1) > 1 else ""))
    if summary["replaced_gammas"]:  # say so: runs trained before read the old returns
        print(f"  replaced the returns of gamma {', '.join(map(str, summary['replaced_gammas']))} (AWR runs trained "
              f"on this folder before read those)")
    return 0


def run_stats(config: StatsConfig) -> int:
    stats = dataset_stats(config.directory, std_floor=config.std_floor, hidden=config.hidden,
                          all_tokens_valid=config.all_tokens_valid, show_progress=config.progress)
    out = Path(config.out) if config.out else Path(config.directory) / STATS_FILE
    write_text_atomic(out, json.dumps(stats, indent=1))
    print(format_stats(stats))
    print(f"saved {out}")
    return 0


def run_import(config: ImportConfig) -> int:
    print(format_summary(import_trajectories(config)))
    return 0
