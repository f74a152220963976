"""Reading a dataset for training: `hsrl.data.load_dataset` (each member decompressed once per file, straight
into one preallocated array) against naive per-sample reads (`np.load(file)[key][row]`, which decompresses
the whole member for every sample), in one run. Also time and peak memory of load_dataset against
loading each file with np.load and concatenating.

    python benchmarks/bench_data.py [--files 4] [--steps 32] [--envs 16] [--obs-dim 1345] [--hidden 2560]

Prints per-sample times and "ratio" = naive / load_dataset time per sample; the last line is a JSON object.
"""

import argparse
import tempfile
import time
import tracemalloc

import numpy as np

from hsrl.data import ChunkMeta, chunk_path, list_chunks, load_dataset, write_chunk
from record import record

KEYS = ("obs", "action", "reward", "hidden_state")


def make_data(folder, files, steps, envs, obs_dim, hidden, rng):
    n = steps * envs
    for i in range(files):
        obs = (rng.random((n, obs_dim)) < 0.05).astype(np.float32)  # sparse, like Craftax symbolic obs
        arrays = {"obs": obs, "next_obs": obs, "action": rng.integers(0, 17, n), "reward": rng.random(n),
                  "done": rng.random(n) < 0.01, "hidden_state": rng.standard_normal((n, hidden)).astype(np.float16)}
        write_chunk(chunk_path(folder, i), arrays,
                    ChunkMeta(env_name="Craftax-Classic-Symbolic-v1", num_envs=envs, obs_kind="symbolic",
                              first_step=i * steps))


def naive_sample(path, row):
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k][row] for k in KEYS}


def concat_load(files):
    parts = []
    for f in files:
        with np.load(f, allow_pickle=False) as z:
            parts.append({k: z[k] for k in KEYS})
    return {k: np.concatenate([part[k] for part in parts]) for k in KEYS}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=4)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--envs", type=int, default=16)
    p.add_argument("--obs-dim", type=int, default=1345)
    p.add_argument("--hidden", type=int, default=2560)
    p.add_argument("--naive-samples", type=int, default=40, help="samples read the naive way (it is slow)")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        make_data(folder, args.files, args.steps, args.envs, args.obs_dim, args.hidden, rng)
        files = list_chunks(folder)
        total = args.files * args.steps * args.envs

        t0 = time.perf_counter()
        ds = load_dataset(folder, KEYS, show_progress=False)
        loader_s = time.perf_counter() - t0
        result_bytes = sum(a.nbytes for a in ds.arrays.values())

        rows = rng.integers(0, total, args.naive_samples)
        per_file = args.steps * args.envs
        t0 = time.perf_counter()
        for r in rows:
            s = naive_sample(files[r // per_file], r % per_file)
            assert np.array_equal(s["hidden_state"], ds["hidden_state"][r])
        naive_s = time.perf_counter() - t0
        del ds

        t0 = time.perf_counter()
        concat_load(files)
        concat_s = time.perf_counter() - t0

        tracemalloc.start()
        load_dataset(folder, KEYS, show_progress=False)
        loader_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        tracemalloc.start()
        concat_load(files)
        concat_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()

    loader_per = loader_s / total
    naive_per = naive_s / args.naive_samples
    figures = {
        "samples": total, "files": args.files, "result_mb": round(result_bytes / 2**20, 2),
        "loader_s": round(loader_s, 4), "loader_us_per_sample": round(loader_per * 1e6, 2),
        "naive_ms_per_sample": round(naive_per * 1e3, 3), "ratio": round(naive_per / loader_per, 1),
        "npz_concat_s": round(concat_s, 4),
        "loader_peak_mb": round(loader_peak / 2**20, 2), "npz_concat_peak_mb": round(concat_peak / 2**20, 2),
        "peak_ratio": round(concat_peak / loader_peak, 2),
    }
    print(f"load_dataset: {total} samples ({figures['result_mb']} MiB) in {loader_s:.3f} s = "
          f"{figures['loader_us_per_sample']} us/sample, peak {figures['loader_peak_mb']} MiB")
    print(f"naive per-sample np.load: {figures['naive_ms_per_sample']} ms/sample -> ratio {figures['ratio']}x")
    print(f"np.load per file + concatenate: {concat_s:.3f} s, peak {figures['npz_concat_peak_mb']} MiB "
          f"({figures['peak_ratio']}x load_dataset's)")
    record("bench_data", figures)


if __name__ == "__main__":
    main()
