"""Hidden-state server: requests/s and latency under concurrent clients, against in-process extraction.

Measures, on this machine's device (CPU float32 unless CUDA is present), with MiniLM on Craftax-Classic observations
collected by random play (`hsrl.data.collect`):
  - in-process: `render_text` + `extractor.extract` over the observations in batches of --max-batch
    (observations/s), the path `hsrl label` takes;
  - the server: `hsrl serve` in a subprocess on a loopback port (bearer token on), and 1, 8 and 32 concurrent
    clients (threads, one `HiddenStateClient` each), each sending requests of --per-request observations for
    --seconds: requests/s, observations/s, p50/p99 latency, and the mean batch the server ran (from /v1/stats);
  - ratio = the server's observations/s at the highest concurrency / in-process observations/s, on the same
    observations (1.0 would mean HTTP, JSON and batching cost nothing);
  - Ray Serve: `hsrl serve --ray --replicas N` (a local Ray, N CPU replicas; --ray-replicas 0 skips it) at the
    highest concurrency only: ray_ratio = its observations/s / the one `hsrl serve` process's. On one machine the
    replicas share its cores, so this tells the cost of Ray Serve's extra hop (proxy -> replica), not a speed-up.

The server's vectors are checked against the in-process ones (max |diff| reported). The last line is one JSON object
with the figures.

    python benchmarks/bench_serve.py [--clients 1 8 32] [--seconds 15] [--per-request 1] [--max-batch 64] [--threads N]
                                     [--ray-replicas 2]

On a CPU shared with other work, pass --threads 1: torch's default of one thread per core spins when the cores are
busy (on a loaded 2-core machine a single MiniLM observation took ~1 s with 2 threads, ~65 ms with 1).
"""

import argparse
import contextlib
import os
import platform
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from record import record

ENV = "Craftax-Classic-Symbolic-v1"


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [l.split(":", 1)[1].strip() for l in cpuinfo.read_text().splitlines() if l.startswith("model name")]
        if names:
            return f"CPU {names[0]} x{len(names)}"
    return f"CPU {platform.processor() or platform.machine()}"


def observations(n: int) -> np.ndarray:
    """n symbolic observations from random play (2 envs, 8-step chunks: the tests' compiled shapes)."""
    from hsrl.data import list_chunks, read_chunk
    from hsrl.data.collect import CollectConfig, collect
    from hsrl.jaxcache import enable_compilation_cache

    enable_compilation_cache()
    with tempfile.TemporaryDirectory() as folder:
        collect(CollectConfig(env=ENV, envs=2, steps=n, chunk_steps=8, out=folder, seed=0, progress=False))
        return np.concatenate([read_chunk(f)["obs"] for f in list_chunks(folder)])[:n]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def in_process(obs: np.ndarray, max_batch: int, repeats: int) -> tuple[float, np.ndarray]:
    """(observations/s, hidden) of render + extract, best of `repeats` after a warm-up batch."""
    from hsrl.llm import ExtractionSpec, make_extractor
    from hsrl.text import render_text

    extractor = make_extractor(ExtractionSpec(model="minilm", variant="classic"), batch_size=max_batch)
    extractor.extract(render_text(obs[:4], "classic"))
    best, hidden = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        hidden = extractor.extract(render_text(obs, "classic")).hidden_state
        best = min(best, time.perf_counter() - start)
    return len(obs) / best, hidden


@contextlib.contextmanager
def running_server(flags: list[str], token: str, log):
    """`hsrl serve FLAGS` in a subprocess for the duration of the block, its output to `log` (shown on failure)."""
    from hsrl.serve.wire import TOKEN_ENV

    server = subprocess.Popen([sys.executable, "-m", "hsrl.cli", "serve", *flags], stdout=log,
                              stderr=subprocess.STDOUT, env={**os.environ, TOKEN_ENV: token})
    try:
        yield server
    except BaseException:
        log.flush()
        print(Path(log.name).read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def load(url: str, token: str, obs: np.ndarray, clients: int, per_request: int, seconds: float, max_requests: int):
    """Run `clients` threads for `seconds` (or `max_requests` requests in all); latencies in seconds."""
    from hsrl.serve import HiddenStateClient

    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(clients + 1)
    budget = threading.Semaphore(max_requests)
    finished = [0.0] * clients

    def worker(k: int) -> None:
        with HiddenStateClient(url, token=token, timeout=600, retries=0) as client:
            client._request_limit()
            barrier.wait()
            end = time.perf_counter() + seconds
            i = k * per_request
            try:
                while time.perf_counter() < end and budget.acquire(blocking=False):
                    rows = [(i + j) % len(obs) for j in range(per_request)]
                    t = time.perf_counter()
                    client.hidden_states(observations=obs[rows])
                    latencies[k].append(time.perf_counter() - t)
                    i += clients * per_request
            except Exception as err:  # reported by the caller
                errors.append(err)
            finished[k] = time.perf_counter()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    wall = max(finished) - start
    return [x for lat in latencies for x in lat], wall


def rates(latencies: list[float], wall: float, per_request: int) -> dict:
    lat = np.array(latencies) * 1000
    return {"requests": len(lat), "requests_per_s": len(lat) / wall, "obs_per_s": len(lat) * per_request / wall,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=15.0, help="time per concurrency level")
    parser.add_argument("--max-requests", type=int, default=2000, help="requests per level at most")
    parser.add_argument("--per-request", type=int, default=1, help="observations per request")
    parser.add_argument("--observations", type=int, default=64, help="distinct observations (in-process batch)")
    parser.add_argument("--max-batch", type=int, default=64, help="server --max-batch and in-process batch size")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=2, help="in-process timed runs (best is kept)")
    parser.add_argument("--ray-replicas", type=int, default=2, help="replicas of the Ray Serve row (0: no Ray row)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads, in-process and in the server (OMP_NUM_THREADS; default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before torch loads, here and in the server process
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    from hsrl.serve import HiddenStateClient

    token = secrets.token_hex(16)
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="bench_serve_", suffix=".log", delete=False)
    common = ["--env", ENV, "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
              "--log-level", "warning"]
    url = f"http://127.0.0.1:{port}"
    with running_server(common + ["--port", str(port)], token, log):
        obs = observations(args.observations)  # while the server loads
        figures: dict = {"device": device_name(), "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                         "observations": len(obs), "per_request": args.per_request, "max_batch": args.max_batch,
                         "max_wait_ms": args.max_wait_ms, "seconds_per_level": args.seconds}
        print(f"{figures['device']}, {figures['torch_threads']} torch threads, {len(obs)} observations")
        HiddenStateClient(url, token=token).wait_ready(timeout=600)  # measure in-process with the server idle
        inproc_rate, inproc_hidden = in_process(obs, args.max_batch, args.repeats)
        figures["inprocess_obs_per_s"] = inproc_rate
        print(f"in-process render + extract (batch {args.max_batch}): {inproc_rate:.1f} observations/s")

        with HiddenStateClient(url, token=token) as client:
            served = client.hidden_states(observations=obs)  # also the warm-up
            figures["max_abs_diff_vs_inprocess"] = float(np.abs(served - inproc_hidden).max())
            levels = {}
            for clients in args.clients:
                before = client.stats()
                latencies, wall = load(url, token, obs, clients, args.per_request, args.seconds, args.max_requests)
                after = client.stats()
                batches = after["batches"] - before["batches"]
                row = {**rates(latencies, wall, args.per_request),
                       "mean_server_batch": (after["observations"] - before["observations"]) / max(batches, 1)}
                levels[str(clients)] = row
                print(f"{clients:>3} clients: {row['requests_per_s']:7.1f} requests/s, {row['obs_per_s']:7.1f} obs/s, "
                      f"p50 {row['p50_ms']:8.1f} ms, p99 {row['p99_ms']:8.1f} ms, mean server batch "
                      f"{row['mean_server_batch']:.1f} ({row['requests']} requests)")
            figures["levels"] = levels
            figures["server_max_batch_seen"] = client.stats()["max_batch_observations"]

    top_clients = max(args.clients)
    if args.ray_replicas > 0:  # after the single server stopped, so the two never share the cores
        ray_port = free_port()
        ray_url = f"http://127.0.0.1:{ray_port}"
        with running_server(common + ["--port", str(ray_port), "--ray", "--replicas", str(args.ray_replicas)],
                            token, log):
            with HiddenStateClient(ray_url, token=token) as client:
                client.wait_ready(timeout=600)
                served = client.hidden_states(observations=obs)  # also the warm-up of both replicas' first batch
                figures["ray_max_abs_diff_vs_inprocess"] = float(np.abs(served - inproc_hidden).max())
                latencies, wall = load(ray_url, token, obs, top_clients, args.per_request, args.seconds,
                                       args.max_requests)
            figures["ray"] = {"replicas": args.ray_replicas, "clients": top_clients,
                              **rates(latencies, wall, args.per_request)}
    log.close()
    os.unlink(log.name)

    top = levels[str(top_clients)]
    figures["server_obs_per_s"] = top["obs_per_s"]
    figures["ratio"] = top["obs_per_s"] / inproc_rate
    print(f"server at {max(args.clients)} clients / in-process: {figures['ratio']:.2f}x "
          f"({top['obs_per_s']:.1f} vs {inproc_rate:.1f} observations/s; max |diff| "
          f"{figures['max_abs_diff_vs_inprocess']:.1e})")
    if "ray" in figures:
        ray_row = figures["ray"]
        figures["ray_ratio"] = ray_row["obs_per_s"] / top["obs_per_s"]
        print(f"Ray Serve, {ray_row['replicas']} replicas, {top_clients} clients: {ray_row['requests_per_s']:7.1f} "
              f"requests/s, {ray_row['obs_per_s']:7.1f} obs/s, p50 {ray_row['p50_ms']:8.1f} ms, p99 "
              f"{ray_row['p99_ms']:8.1f} ms; / one hsrl serve: {figures['ray_ratio']:.2f}x (max |diff| "
              f"{figures['ray_max_abs_diff_vs_inprocess']:.1e})")
    record("bench_serve", figures, sort_keys=True)


if __name__ == "__main__":
    main()
