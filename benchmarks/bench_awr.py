"""Does the AWR loader stall the jitted step? Steps/s of the same jitted K-step update fed four ways, in one run:

    predone   the same K batches, already on the device, fed again and again (no loading at all: the ceiling)
    loader    hsrl.rl.awr.Prefetcher: a background thread samples, gathers on the host and device_puts ahead
    sync      the same gathering and device_put done inline, between calls (what the thread hides)
    device    the whole dataset on the device; batches sampled and gathered inside the scan (`--device-data`)

    python benchmarks/bench_awr.py [--rows 50000] [--obs-dim 1345] [--hidden 2560] [--width 512] [--steps 96] [--repeats 3]

Defaults: Craftax-Classic symbolic observations (1345 floats), Qwen3-4B-sized hidden states (2560, float16),
ActorCriticMLPAug 512 wide, batch 256. Modes are interleaved in each round and each figure is the median of the
rounds, so other load on the machine falls on all modes alike. "ratio" = loader / predone steps per second (1.0: the loader never stalls
the step); "device_ratio" = device / predone. The last line is one JSON object with the figures.
"""

import argparse
import json
import platform
import time

import jax
import numpy as np

from hsrl.rl.awr import (
    AWRHyper, HOST_BLOCK_BYTES, Prefetcher, block_schedule, hidden_stats_of, init_state, make_batches_block,
    make_device_block, make_update,
)
from hsrl.rl.networks import NetworkConfig


def make_arrays(rows, obs_dim, hidden, rng):
    return {
        "obs": (rng.random((rows, obs_dim)) < 0.05).astype(np.float32),  # sparse, like Craftax symbolic obs
        "action": rng.integers(0, 17, rows).astype(np.int32),
        "return_to_go": rng.standard_normal(rows).astype(np.float32),
        "hidden_state": rng.standard_normal((rows, hidden)).astype(np.float16),
    }


def measure(modes, calls, per_call, repeats):
    """Median steps/s of each mode over `repeats` rounds, the modes interleaved within each round and their
    order rotated (so load from
    other processes falls on all of them alike). A mode is (run(state, i) -> (state, metrics), state); each does
    one warm-up call (compilation) first."""
    states = {}
    for name, (run, state) in modes.items():
        state, m = run(state, -1)
        jax.block_until_ready(m)
        states[name] = state
    rates = {name: [] for name in modes}
    names = list(modes)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate who goes first
            run = modes[name][0]
            state = states[name]
            t0 = time.perf_counter()
            for i in range(calls):
                state, m = run(state, r * calls + i)
            jax.block_until_ready((state, m))
            rates[name].append(calls * per_call / (time.perf_counter() - t0))
            states[name] = state
    return {name: float(np.median(v)) for name, v in rates.items()}, rates


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--obs-dim", type=int, default=1345)
    p.add_argument("--hidden", type=int, default=2560)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=96, help="measured steps per mode and round")
    p.add_argument("--repeats", type=int, default=3, help="rounds; each mode's figure is its median")
    p.add_argument("--steps-per-call", type=int, default=None,
                   help="K (default: the host loader's choice, min(100, 64 MB of batches))")
    args = p.parse_args()

    rng = np.random.default_rng(0)
    arrays = make_arrays(args.rows, args.obs_dim, args.hidden, rng)
    rows = np.arange(args.rows, dtype=np.int32)
    stats = hidden_stats_of(arrays["hidden_state"], None)
    net = NetworkConfig("mlp", 17, (args.obs_dim,), hidden_size=args.hidden, width=args.width)
    hyper = AWRHyper()
    update = make_update(net, hyper, stats)
    row_bytes = sum(a[0].nbytes for a in arrays.values()) * args.batch_size
    k = args.steps_per_call or max(1, min(100, HOST_BLOCK_BYTES // row_bytes))
    calls = max(1, args.steps // k)
    batches_fn = make_batches_block(update)
    fresh = lambda: init_state(net, hyper, 0)  # noqa: E731
    device = jax.devices()[0]

    maker = Prefetcher(arrays, rows, fresh().rng, [], args.batch_size, device=device)
    ready = maker.make(0, k)  # predone: one block of batches made once, on the device
    jax.block_until_ready(ready)
    blocks = block_schedule(0, (args.repeats * calls + 1) * k, k, ())  # +1: the warm-up call
    loader = Prefetcher(arrays, rows, fresh().rng, blocks, args.batch_size, device=device)
    it = iter(loader)
    device_block = make_device_block(update, args.batch_size)
    device_data = jax.device_put({**arrays, "rows": rows}, device)
    modes = {
        "predone": (lambda s, i: batches_fn(s, ready), fresh()),
        "loader": (lambda s, i: batches_fn(s, next(it)), fresh()),
        "sync": (lambda s, i: batches_fn(s, maker.make((i + 1) * k, k)), fresh()),  # gather + device_put inline
        "device": (lambda s, i: device_block(s, device_data, k), fresh()),
    }
    sps, rounds = measure(modes, calls, k, args.repeats)
    loader.close()
    predone_sps, loader_sps, sync_sps, device_sps = (sps[m] for m in ("predone", "loader", "sync", "device"))

    result = {
        "benchmark": "awr_loader",
        "device": str(device), "platform": platform.processor() or platform.machine(),
        "rows": args.rows, "obs_dim": args.obs_dim, "hidden": args.hidden, "width": args.width,
        "batch_size": args.batch_size, "steps_per_call": k, "measured_steps": calls * k,
        "repeats": args.repeats, "batch_mb": round(row_bytes / 1e6, 2),
        "rounds_sps": {m: [round(x, 1) for x in v] for m, v in rounds.items()},
        "predone_sps": round(predone_sps, 1), "loader_sps": round(loader_sps, 1), "sync_sps": round(sync_sps, 1),
        "device_sps": round(device_sps, 1),
        "ratio": round(loader_sps / predone_sps, 3), "sync_ratio": round(sync_sps / predone_sps, 3),
        "device_ratio": round(device_sps / predone_sps, 3),
    }
    for name in ("predone", "loader", "sync", "device"):
        print(f"{name:8s} {result[name + '_sps']:10.1f} steps/s")
    print(f"loader / predone = {result['ratio']:.3f} (1.0: the loader never stalls the step); "
          f"sync / predone = {result['sync_ratio']:.3f}; device / predone = {result['device_ratio']:.3f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
