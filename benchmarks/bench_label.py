"""Labelling with the hidden-state cache against without, and end-to-end labelling against the backend alone.

    python benchmarks/bench_label.py [--model minilm] [--envs 8] [--steps 4096] [--batch-size 32]

Collects a random-policy Craftax-Classic dataset with `hsrl collect` (8 envs, 4096 rows by default), then times,
each from a freshly loaded model with loading excluded, interleaved --repeats times (best kept):
  (1) with --backend, the extractor alone on the dataset's text observations (no cache),
  (2) `hsrl label --no-cache` on the same files (reading, rendering, prompts, extraction, writing),
  (3) `hsrl label` with its (in-memory, per-run) cache.
Prints the cache's time ratio (3)/(2) (target <= 0.7; it should be close to the fraction of distinct
observations), checks that (2) and (3) wrote the same states, and the pipeline ratio (2)/(1) (target >= 0.9).
"""

import argparse
import os
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from hsrl.data import list_chunks, read_chunk
from hsrl.data.collect import CollectConfig, collect
from hsrl.data.label import LabelConfig, label_dataset
from record import record


def states(folder: Path) -> np.ndarray:
    return np.concatenate([read_chunk(f, ["hidden_state"])["hidden_state"] for f in list_chunks(folder)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm")
    p.add_argument("--envs", type=int, default=8)
    p.add_argument("--steps", type=int, default=4096, help="total env steps collected (rows)")
    p.add_argument("--chunk-steps", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--tokens", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1, help="interleaved runs of each; the best is kept")
    p.add_argument("--backend", action="store_true", help="also time the extractor alone (the pipeline ratio)")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_label_"))
    collect(CollectConfig(env="Craftax-Classic-Symbolic-v1", envs=args.envs, steps=args.steps,
                          chunk_steps=args.chunk_steps, out=str(work / "raw"), progress=False))
    texts = np.concatenate([read_chunk(f, ["text_obs"])["text_obs"] for f in list_chunks(work / "raw")])
    unique = len(set(texts.tolist())) / len(texts)
    config = LabelConfig(str(work / "raw"), str(work / "out"), model=args.model, tokens=args.tokens,
                         batch_size=args.batch_size, progress=False)

    from hsrl.llm import make_extractor

    raws, uncached, cached = [], [], []
    for r in range(args.repeats):  # interleaved, each from a freshly loaded model (all pay the first call)
        if args.backend:
            extractor = make_extractor(config.extraction_spec("classic"), batch_size=args.batch_size)
            t0 = time.perf_counter()
            for i in range(0, len(texts), args.batch_size):
                extractor.extract(list(texts[i : i + args.batch_size]))
            raws.append(time.perf_counter() - t0)
            del extractor
        off = label_dataset(replace(config, out_dir=str(work / f"off{r}"), no_cache=True))
        uncached.append(off.seconds)
        on = label_dataset(replace(config, out_dir=str(work / f"on{r}")))
        cached.append(on.seconds)
    raw, t_off, t_on = min(raws, default=float("nan")), min(uncached), min(cached)
    difference = float(np.abs(states(work / "off0") - states(work / "on0")).max())
    hit_rate = on.cache["hits"] / (on.cache["hits"] + on.cache["misses"])
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    load = os.getloadavg()[0]
    print(f"{len(texts)} samples ({unique:.1%} distinct observations), model {args.model}, tokens {args.tokens}, "
          f"batch {args.batch_size}; load average {load:.1f} on {os.cpu_count()} CPUs")
    print(f"backend alone:         {len(texts) / raw:8.1f} samples/s")
    print(f"hsrl label --no-cache: {len(texts) / t_off:8.1f} samples/s ({t_off:.1f} s)")
    print(f"hsrl label (cache):    {len(texts) / t_on:8.1f} samples/s ({t_on:.1f} s), hit rate {hit_rate:.1%}")
    print(f"cache time ratio: {t_on / t_off:.3f} (target <= 0.7); largest state difference {difference:.2e}")
    print(f"pipeline ratio (label --no-cache / backend): {raw / t_off:.3f} (target >= 0.9); peak RSS {peak_mb:.0f} MB")
    record("bench_label", {"samples": int(len(texts)), "unique_fraction": round(unique, 4),
                      "backend_samples_per_s": round(len(texts) / raw, 2),
                      "label_nocache_samples_per_s": round(len(texts) / t_off, 2),
                      "label_cache_samples_per_s": round(len(texts) / t_on, 2), "cache_hit_rate": round(hit_rate, 4),
                      "cache_time_ratio": round(t_on / t_off, 4), "max_abs_difference": difference,
                      "ratio": round(raw / t_off, 3), "peak_rss_mb": round(peak_mb), "load_average": round(load, 2)})


if __name__ == "__main__":
    main()
