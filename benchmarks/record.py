"""The result file of a benchmark run: `record(name, figures)` prints the figures as the script's last line (one JSON
object, as every benchmark has always ended) and writes benchmarks/results/NAME.json with the run's command, UTC
date and machine beside them. The docs page reference/benchmark-results.md is generated from those files
(`python -m hsrl.docs build`), so the measured figures on the site are the files' numbers, never copied by hand.

    {"benchmark": NAME, "command": "python3 benchmarks/bench_x.py --flag 1", "date": "2026-12-07T15:58:03Z",
     "machine": {"cpu": ..., "cores": ..., "memory_gb": ..., "gpu": ..., "python": ..., "jax": ..., ...},
     "figures": {...}}

HSRL_BENCH_RECORD=0 prints only (tests that run a benchmark set it); HSRL_BENCH_RESULTS=DIR writes there instead.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)  # kB -> GiB
    except (OSError, ValueError):
        pass
    return None


def _gpu() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # no torch, or a CUDA that fails to initialise: no GPU to name
        return None


def machine() -> dict:
    """The machine a benchmark ran on: CPU model, cores, memory (GiB), GPU (or None) and the versions that matter."""
    info = {"cpu": _cpu_model(), "cores": os.cpu_count(), "memory_gb": _memory_gb(), "gpu": _gpu(),
            "python": platform.python_version()}
    for package in ("jax", "jaxlib", "torch"):
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return info


def command(argv: list[str] | None = None) -> str:
    """The command as run, its script path relative to the repository: `python3 benchmarks/bench_x.py --flag 1`."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]).resolve() if argv and argv[0] else None
    if script is not None and script.is_relative_to(ROOT):
        argv[0] = script.relative_to(ROOT).as_posix()
    return shlex.join(["python3", *argv])


def record(name: str, figures: dict, *, sort_keys: bool = False, write: bool = True,
           argv: list[str] | None = None) -> Path | None:
    """Print `figures` as one JSON line (the script's last line, `json.dumps(figures, sort_keys=sort_keys)`) and,
    unless `write` is false or HSRL_BENCH_RECORD=0, write the result file results/NAME.json atomically (a note on
    stderr names it); returns its path (None when not written)."""
    print(json.dumps(figures, sort_keys=sort_keys), flush=True)
    if not write or os.environ.get("HSRL_BENCH_RECORD", "1") == "0":
        return None
    result = {"benchmark": name, "command": command(argv),
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "machine": machine(), "figures": figures}
    folder = Path(os.environ.get("HSRL_BENCH_RESULTS") or RESULTS)
    folder.mkdir(parents=True, exist_ok=True)
    from hsrl.atomic import write_text_atomic

    path = write_text_atomic(folder / f"{name}.json", json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    return path
