"""End-to-end labelling throughput against the backend's raw throughput on the same prompts.

    python benchmarks/bench_label.py [--model minilm] [--envs 8] [--steps 256] [--batch-size 32]

Collects a small Craftax-Classic dataset (random play), then (1) times the extractor alone on the
dataset's text observations, (2) times `hsrl label` on the same files (reading, rendering, prompts,
extraction, writing), each from a freshly loaded model with loading excluded, interleaved --repeats
times (best kept), and prints the ratio (target >= 0.9) and the peak resident memory of the process.
"""

import argparse
import json
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from hsrl.data import list_chunks, read_chunk
from hsrl.data.collect import CollectConfig, collect
from hsrl.data.label import LabelConfig, label_dataset


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm")
    p.add_argument("--envs", type=int, default=8)
    p.add_argument("--steps", type=int, default=512, help="total env steps collected")
    p.add_argument("--chunk-steps", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--tokens", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2, help="interleaved runs of each; the best is kept")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_label_"))
    collect(CollectConfig(env="Craftax-Classic-Symbolic-v1", envs=args.envs, steps=args.steps,
                          chunk_steps=args.chunk_steps, out=str(work / "raw"), progress=False))
    texts = np.concatenate([read_chunk(f, ["text_obs"])["text_obs"] for f in list_chunks(work / "raw")])
    config = LabelConfig(str(work / "raw"), str(work / "out"), model=args.model, tokens=args.tokens,
                         batch_size=args.batch_size, progress=False)

    from hsrl.llm import make_extractor

    raws, pipes = [], []
    for r in range(args.repeats):  # interleaved, each from a freshly loaded model (both pay the first call)
        extractor = make_extractor(config.extraction_spec("classic"), batch_size=args.batch_size)
        t0 = time.perf_counter()
        for i in range(0, len(texts), args.batch_size):
            extractor.extract(list(texts[i : i + args.batch_size]))
        raws.append(len(texts) / (time.perf_counter() - t0))
        del extractor
        summary = label_dataset(replace(config, out_dir=str(work / f"out{r}")))
        pipes.append(summary.samples / summary.seconds)
    raw, pipeline = max(raws), max(pipes)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ratio = pipeline / raw
    print(f"{len(texts)} samples, model {args.model}, tokens {args.tokens}, batch {args.batch_size}")
    print(f"backend alone:      {raw:8.1f} samples/s")
    print(f"hsrl label (e2e):   {pipeline:8.1f} samples/s (model load excluded)")
    print(f"ratio: {ratio:.3f} (target >= 0.9); peak RSS {peak_mb:.0f} MB")
    print(json.dumps({"samples": int(len(texts)), "backend_samples_per_s": round(raw, 2),
                      "label_samples_per_s": round(pipeline, 2), "ratio": round(ratio, 3),
                      "peak_rss_mb": round(peak_mb)}))


if __name__ == "__main__":
    main()
