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

The pixel row (`--pixels`): `hsrl train-awr --no-hidden` on pixels against the torch AWR a user would otherwise write.

    python benchmarks/bench_awr.py --pixels [--env Craftax-Pixels-v1] [--rows 4096] [--steps 4] [--repeats 3]

hsrl's path is train-awr's own: ActorCriticConv (3 x [conv 32 5x5, ReLU, max-pool 3x3/3] -> dense 512 -> heads 512),
the whole dataset on the device and `--steps` updates per jitted call (`DeviceBatches`, a lax.scan), batch 256, Adam
3e-4. The baseline, written below in plain torch: the same layers, widths, AWR loss and Adam, float32, NCHW
convolutions on torch's CPU threads, batches indexed from a uint8 tensor of the same frames. Frames are random uint8
of the env's observation shape (a convolution's speed does not depend on what the pixels show). The two alternate
in each round (order rotated), each figure is the median over the rounds, after one warm-up call each (JAX's compile,
timed on its own: `hsrl_first_call_s` minus a steady call; the XLA options the update compiled with, if any, in
`hsrl_compiler_options`). "pixel_ratio" = hsrl / torch samples per second.
"""

import argparse
import os
import platform
import time

import jax
import numpy as np

from hsrl.rl.awr import (
    AWRHyper, HOST_BLOCK_BYTES, Prefetcher, block_schedule, hidden_stats_of, init_state, make_batches_block,
    make_device_block, make_update,
)
from hsrl.rl.networks import NetworkConfig
from record import record


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


def torch_awr(obs_shape, num_actions: int, width: int, lr: float, beta: float, max_weight: float):
    """The plain torch AWR a user would write for the same network: returns `step(obs_uint8, action, ret)`."""
    import torch
    from torch import nn

    h, w, c = obs_shape
    layers = []
    for _ in range(3):  # conv 32 5x5 SAME, ReLU, max-pool 3x3 stride 3 rounding up (SAME's output size)
        layers += [nn.Conv2d(c, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 3, ceil_mode=True)]
        c, h, w = 32, -(-h // 3), -(-w // 3)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Sequential(*layers)
            self.encoder = nn.Linear(c * h * w, width)
            self.actor = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, num_actions))
            self.critic = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1))

        def forward(self, obs):
            x = obs.permute(0, 3, 1, 2).float() / 255.0
            features = torch.relu(self.encoder(self.conv(x).flatten(1)))
            return self.actor(features), self.critic(features).squeeze(-1)

    torch.manual_seed(0)
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=lr)

    def step(obs, action, ret):
        logits, value = net(obs)
        adv = ret - value
        weight = torch.clamp(torch.exp(adv.detach() / beta), max=max_weight)
        log_prob = torch.log_softmax(logits, -1).gather(1, action[:, None])[:, 0]
        loss = -(weight * log_prob).mean() + 0.5 * (adv ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step


def pixel_row(args) -> dict:
    """hsrl's pixel AWR (train-awr's device path) vs the plain torch AWR, samples/s in one run."""
    import torch

    from hsrl.env.catalog import env_info
    from hsrl.rl.awr import DeviceBatches

    info = env_info(args.env)
    if not info.pixels:
        raise SystemExit(f"--pixels needs a pixel env, got {args.env}")
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (args.rows, *info.obs_shape), dtype=np.uint8)
    arrays = {"obs": frames, "action": rng.integers(0, info.num_actions, args.rows).astype(np.int32),
              "return_to_go": rng.standard_normal(args.rows).astype(np.float32)}
    rows = np.arange(args.rows, dtype=np.int32)
    net = NetworkConfig.for_env(info.obs_shape, info.num_actions, None, width=args.width)
    hyper = AWRHyper()
    device = jax.devices()[0]
    k, batch = args.steps, args.batch_size
    update = make_update(net, hyper, None)
    jax_batches = DeviceBatches(update, arrays, rows, batch, device)
    torch_step = torch_awr(info.obs_shape, info.num_actions, args.width, hyper.lr, hyper.beta, hyper.max_weight)
    t_obs, t_action, t_ret = (torch.from_numpy(arrays[key]) for key in ("obs", "action", "return_to_go"))
    t_action = t_action.long()
    gen = torch.Generator().manual_seed(0)

    def run_torch(state, i):
        for _ in range(k):
            idx = torch.randint(0, args.rows, (batch,), generator=gen)
            loss = torch_step(t_obs[idx], t_action[idx], t_ret[idx])
        return state, loss.detach()

    state = init_state(net, hyper, 0, device)
    t0 = time.perf_counter()
    state, m = jax_batches.run(state, 0, k)  # compiles
    jax.block_until_ready(m)
    first_call = time.perf_counter() - t0
    step = {"hsrl": k}

    def run_hsrl(state, i):
        state, m = jax_batches.run(state, step["hsrl"], k)
        step["hsrl"] += k
        return state, m

    sps, rounds = measure({"hsrl": (run_hsrl, state), "torch": (run_torch, None)}, 1, k * batch, args.repeats)
    steady = k * batch / sps["hsrl"]
    return {
        "benchmark": "awr_pixels", "env": args.env, "obs_shape": list(info.obs_shape), "rows": args.rows,
        "network": net.class_name, "width": args.width, "batch_size": batch, "steps_per_call": k,
        "repeats": args.repeats, "device": str(device), "platform": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg()[0],
        "jax": jax.__version__, "hsrl_compiler_options": update.compiler_options,
        "hsrl_first_call_s": round(first_call, 2), "hsrl_compile_s": round(first_call - steady, 2),
        "rounds_sps": {m: [round(x, 2) for x in v] for m, v in rounds.items()},
        "hsrl_sps": round(sps["hsrl"], 2), "torch_sps": round(sps["torch"], 2),
        "pixel_ratio": round(sps["hsrl"] / sps["torch"], 3),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pixels", action="store_true", help="the pixel row: hsrl's pixel AWR vs plain torch")
    p.add_argument("--env", default="Craftax-Pixels-v1", help="pixel row: the env whose frames (shape, actions)")
    p.add_argument("--rows", type=int, default=None, help="dataset rows (default 50000; pixel row 4096)")
    p.add_argument("--obs-dim", type=int, default=1345)
    p.add_argument("--hidden", type=int, default=2560)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=None,
                   help="measured steps per mode and round (default 96; pixel row 4, one jitted call)")
    p.add_argument("--repeats", type=int, default=3, help="rounds; each mode's figure is its median")
    p.add_argument("--steps-per-call", type=int, default=None,
                   help="K (default: the host loader's choice, min(100, 64 MB of batches))")
    args = p.parse_args()
    if args.pixels:
        args.rows, args.steps = args.rows or 4096, args.steps or 4
        result = pixel_row(args)
        print(f"hsrl  {result['hsrl_sps']:8.2f} samples/s (first call {result['hsrl_first_call_s']} s, "
              f"compile ~{result['hsrl_compile_s']} s)")
        print(f"torch {result['torch_sps']:8.2f} samples/s ({result['torch_threads']} threads)")
        print(f"hsrl / torch = {result['pixel_ratio']:.3f}")
        record("bench_awr_pixels", result)
        return
    args.rows, args.steps = args.rows or 50_000, args.steps or 96

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
    record("bench_awr", result)


if __name__ == "__main__":
    main()
