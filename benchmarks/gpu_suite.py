"""One command for a lent GPU: the reference model at full size (random weights), measured where users care.

    bash benchmarks/gpu_carry.sh                         # here: fetch the wheels the GPU machine lacks, print the line
    python benchmarks/gpu_suite.py                       # there: on one GPU; sized for one 10-minute device call
    python benchmarks/gpu_suite.py --device cpu --small  # the same code at test size, in seconds (a test runs it)

Builds the random full-size Qwen3-4B-Thinking-2507 (`hsrl make-model`; or --model FOLDER), takes full-Craftax text
observations from a reset of --obs-envs environments, and measures, each part on its own (a part that fails or cannot
run records why, and the rest still runs):

- prompt-only extraction (transformers), samples/s at batch 64 and 256, with and without the shared-prefix cache;
  the vLLM backend's too when `vllm` imports;
- generation of 256 tokens then pooling, samples/s at batch 64 and 256 (transformers; vLLM at 64 when present);
- model FLOPs utilisation of each: 2 x parameters x tokens computed per second / the GPU's bf16 dense peak (a small
  table: H100, H200, A100, L40S; none on CPU). Tokens computed: the prompt tokens run (the shared prefix once when
  the cache holds it) plus the generated tokens;
- how far bfloat16 moves a hidden state: the prompt-only states of 64 observations computed on the GPU in bfloat16
  against the same computed on the CPU in float32 (a second process that loads the model in float32 and runs on the
  machine's CPU cores while the GPU parts run): per-sample cosine similarity (min, mean), per-sample relative
  difference |gpu - cpu| / |cpu| in L2 norm (max, mean), and the largest element difference over the largest
  element of the float32 states. Random weights: a trained model's states may move differently;
- online PPO steps/s and peak GPU memory at 128 and 1024 envs, skip-n 25, --tokens 1 with the model on the same
  GPU, beside --no-hidden at 128 and 1024 envs, with the time shares (first update, which compiles, left out);
- peak GPU memory of each part (torch's allocator; JAX's peak since the process began for the online runs);
- batch invariance of generation in bfloat16: the fraction of 64 samples whose 256 generated tokens are identical at
  batch sizes 1, 16 and 64 (batch 1 on the first 8 of them, to fit the time).

Not yet run on a GPU. The estimate: build 1-2 min, prompt-only 1 min, generation 1-2 min, online 3-4 min, batch
invariance 1.5 min, vLLM 2-3 min when installed; the float32 reference runs beside them on the CPU. --budget-s
(default 540 s on a GPU) keeps the whole run inside one device call: a part that would start after the budget is
skipped and says so, the float32 reference is compared on the samples it finished by then, and --json-out rewrites
the figures file after every part, so a run cut short still leaves what it measured. `--skip` leaves parts out.
Prints one line per figure, then every figure as one JSON line (the last line). `--small` scales everything down
(2-block model of width 64, Craftax-Classic, batches 8/16, 8 tokens, 8 and 16 envs, skip-n 4 so the short online
runs call the model) so CI runs the same code. JAX's GPU preallocation is turned off (XLA_PYTHON_CLIENT_PREALLOCATE),
as torch holds the model on the same GPU.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
from record import record

# JAX would take 75% of the GPU at its first use; torch holds the LLM on the same GPU (online PPO runs both)
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

# bf16 dense tensor-core peak, TFLOP/s (vendor datasheets; SXM parts for H100/H200/A100)
GPU_PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}


def gpu_peak_tflops(name: str | None) -> float | None:
    if not name:
        return None
    for key, peak in GPU_PEAK_BF16_TFLOPS.items():  # "H100 PCIe" before "H100"
        if key in name:
            return peak
    return None


class Suite:
    def __init__(self, args):
        self.args = args
        self.small = args.small
        self.device = args.device
        self.figures: dict = {}
        self.peak = None
        self.start = time.perf_counter()
        self.reference = None  # the float32 CPU process (drift)
        self.drift_done = False

    # ---- bookkeeping ---------------------------------------------------------------------------------------------

    def left_s(self) -> float:
        """Seconds left of --budget-s (infinite without one)."""
        if self.args.budget_s is None:
            return float("inf")
        return self.args.budget_s - (time.perf_counter() - self.start)

    def part(self, name: str, fn, always: bool = False) -> None:
        """Run one part; on failure record `<name>_error` (one line) and go on. A part that would start after the
        budget is spent is skipped and says so (unless `always`). The figures file (--json-out) is rewritten after
        each part."""
        if self.left_s() <= 0 and not always:
            self.figures[f"{name}_error"] = f"skipped: the budget (--budget-s {self.args.budget_s}) was spent"
            return
        t = time.perf_counter()
        try:
            fn()
        except Exception as err:  # noqa: BLE001  (a failed part must not stop the others)
            self.figures[f"{name}_error"] = _one_line(err)
            traceback.print_exc(file=sys.stderr)
        self.figures[f"{name}_wall_s"] = round(time.perf_counter() - t, 1)
        self.save()
        ref = self.reference
        if ref is not None and not self.drift_done and hasattr(self, "drift_states") and ref.poll() is not None:
            self.part("drift_compare", self.drift_compare, always=True)  # as soon as both sides are done

    def save(self) -> None:
        if self.args.json_out:
            path = Path(self.args.json_out)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps({**self.figures, "wall_s": round(time.perf_counter() - self.start, 1)}))
            tmp.replace(path)

    def reset_memory(self) -> None:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def peak_gb(self) -> float | None:
        import torch

        if not self.device.startswith("cuda"):
            return None
        torch.cuda.synchronize()
        return round(torch.cuda.max_memory_allocated() / 2**30, 2)

    def mfu(self, tokens_per_s: float) -> float | None:
        if self.peak is None:
            return None
        return round(2 * self.figures["parameters"] * tokens_per_s / (self.peak * 1e12), 4)

    # ---- parts ---------------------------------------------------------------------------------------------------

    def environment(self) -> None:
        import torch

        f = self.figures
        f.update(device=self.device, small=self.small, python=platform.python_version(), torch=torch.__version__,
                 cuda_available=torch.cuda.is_available())
        f["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        self.peak = gpu_peak_tflops(f["gpu"]) if self.device.startswith("cuda") else None
        f["gpu_peak_bf16_tflops"] = self.peak
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError("--device cuda but torch sees no CUDA device (torch built for CPU?)")
        try:
            import jax

            f["jax_backend"] = jax.default_backend()
        except Exception as err:  # noqa: BLE001
            f["jax_backend"] = f"unavailable: {err}"
        try:
            import vllm

            f["vllm"] = vllm.__version__
        except Exception as err:  # noqa: BLE001
            f["vllm"] = f"unavailable: {type(err).__name__}: {err}"

    def build_model(self, work: Path) -> None:
        from hsrl.llm.make_model import make_model

        t = time.perf_counter()
        self.model_path = self.args.model or str(make_model("qwen3-4b-thinking", work / "model", small=self.small))
        self.figures["make_model_s"] = round(time.perf_counter() - t, 1)
        self.figures["model"] = self.model_path

    def load(self) -> None:
        from hsrl.llm.models import load_model

        self.loaded = load_model(self.model_path, "bfloat16", self.device)
        self.figures["parameters"] = sum(p.numel() for p in self.loaded.model.parameters())
        self.figures["hidden_size"] = self.loaded.hidden_size

    def observations(self) -> None:
        import jax

        from hsrl.env import make_env
        from hsrl.env.catalog import env_info
        from hsrl.text import render_text

        env = make_env(self.args.env, self.args.obs_envs)
        out = jax.jit(env.reset)(jax.random.PRNGKey(0))
        obs = np.asarray(out[0] if isinstance(out, tuple) else out.obs)
        self.variant = env_info(self.args.env).variant
        self.texts = list(render_text(obs, self.variant))
        self.figures["observations"] = len(self.texts)

    def _spec(self, **kw):
        from hsrl.llm import ExtractionSpec

        return ExtractionSpec(model=self.model_path, dtype="bfloat16", variant=self.variant, **kw)

    def _texts(self, n: int) -> list[str]:
        return [self.texts[i % len(self.texts)] for i in range(n)]

    def prompt_only(self) -> None:
        from hsrl.llm.transformers_backend import TransformersExtractor

        f = self.figures
        for batch in self.args.batches:
            for cache in (True, False):
                name = f"hf_prompt_b{batch}_{'cache' if cache else 'nocache'}"
                ex = TransformersExtractor(self._spec(), model=self.loaded, batch_size=batch, prefix_cache=cache)
                texts = self._texts(batch * self.args.repeats)
                ex.extract(texts[:batch])  # warm-up (and the prefix's keys/values)
                self.reset_memory()
                t = time.perf_counter()
                res = ex.extract(texts)
                seconds = time.perf_counter() - t
                computed = int(res.prompt_tokens.sum()) - (ex.prefix_tokens * len(texts) if cache else 0)
                f[f"{name}_sps"] = round(len(texts) / seconds, 2)
                f[f"{name}_mfu"] = self.mfu(computed / seconds)
                f[f"{name}_peak_gb"] = self.peak_gb()
                f["prompt_tokens_mean"] = round(float(res.prompt_tokens.mean()), 1)
                f["prefix_tokens"] = ex.prefix_tokens

    def generation(self) -> None:
        from hsrl.llm.transformers_backend import TransformersExtractor

        tokens = self.args.gen_tokens
        for batch in self.args.gen_batches:
            if self.left_s() <= 0:
                self.figures[f"hf_gen{tokens}_b{batch}_error"] = "skipped: the budget was spent"
                continue
            f, name = self.figures, f"hf_gen{tokens}_b{batch}"
            ex = TransformersExtractor(self._spec(tokens=tokens, temperature=0.6), model=self.loaded, batch_size=batch)
            try:
                ex.extract(self._texts(2))  # warm-up
                self.reset_memory()
                texts = self._texts(batch)
                t = time.perf_counter()
                res = ex.extract(texts)
                seconds = time.perf_counter() - t
            except Exception as err:  # noqa: BLE001  (batch 256 holds ~70 GB of keys and values: may not fit)
                f[f"{name}_error"] = _one_line(err)
                f[f"{name}_peak_gb"] = self.peak_gb()
                traceback.print_exc(file=sys.stderr)
                del ex
                self.empty_cache()
                continue
            computed = int(res.prompt_tokens.sum()) - ex.prefix_tokens * len(texts) + int(res.num_tokens.sum())
            f[f"{name}_sps"] = round(len(texts) / seconds, 3)
            f[f"{name}_mfu"] = self.mfu(computed / seconds)
            f[f"{name}_peak_gb"] = self.peak_gb()
            f[f"{name}_generated_tokens_mean"] = round(float(res.num_tokens.mean()), 1)

    # ---- bfloat16 on the GPU against float32 on the CPU ----------------------------------------------------------

    def start_reference(self, work: Path) -> None:
        """Start the float32 CPU process on the drift texts; it runs while the GPU parts do."""
        texts = work / "drift_texts.json"
        texts.write_text(json.dumps(self._texts(self.args.drift_samples)))
        self.reference_out = work / "drift_float32.npy"
        threads = self.args.reference_threads or max(1, (os.cpu_count() or 2) - 4)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--float32-reference", str(texts), str(self.reference_out),
               "--model", self.model_path, "--variant", self.variant, "--reference-threads", str(threads),
               "--reference-chunk", str(self.args.reference_chunk)]
        self.reference_log = work / "drift_float32.log"
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu"}
        self.reference = subprocess.Popen(cmd, stdout=self.reference_log.open("w"), stderr=subprocess.STDOUT, env=env)
        self.figures["drift_float32_threads"] = threads

    def drift_gpu(self) -> None:
        """The same texts' states with the loaded (bfloat16, --device) model, prompt-only as the reference workload."""
        from hsrl.llm.transformers_backend import TransformersExtractor

        n = self.args.drift_samples
        ex = TransformersExtractor(self._spec(), model=self.loaded, batch_size=n)
        self.drift_states = _layer_states(ex.extract(self._texts(n)))

    def drift_compare(self) -> None:
        """Wait for the float32 process (until the budget ends), then compare the samples it finished."""
        f = self.figures
        proc = self.reference
        self.drift_done = True
        if proc is None:
            raise RuntimeError("the float32 reference process did not start (see drift_start_error)")
        if not hasattr(self, "drift_states"):
            proc.kill()
            raise RuntimeError("no bfloat16 states to compare (see drift_error)")
        try:
            proc.wait(timeout=None if self.left_s() == float("inf") else max(1.0, self.left_s()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            f["drift_float32_note"] = "stopped at the budget's end: compared on the samples it finished"
        if not self.reference_out.exists():
            tail = self.reference_log.read_text().strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"the float32 reference finished no sample (exit {proc.returncode}): {tail[0]}")
        ref = np.load(self.reference_out)
        f.update(drift_compare(self.drift_states[:len(ref)], ref))

    def vllm(self) -> None:
        if not str(self.figures.get("vllm", "")).split(".")[0].isdigit():
            raise RuntimeError(f"vllm not importable ({self.figures.get('vllm')}): vLLM rows skipped")
        from hsrl.llm.vllm_backend import VLLMExtractor

        f, tokens, gen_batch = self.figures, self.args.gen_tokens, self.args.gen_batches[0]
        # the generation extractor starts both engines (0.45 of the GPU each); prompt-only shares the extraction one
        gen = VLLMExtractor(self._spec(backend="vllm", tokens=tokens, temperature=0.6), device=self.device,
                            batch_size=gen_batch)
        batch = max(self.args.batches)
        ex = VLLMExtractor(self._spec(backend="vllm"), device=self.device, batch_size=batch, engine=gen.engine)
        texts = self._texts(batch * self.args.repeats)
        ex.extract(texts[:batch])  # warm-up; vLLM's prefix caching then holds the shared prefix
        t = time.perf_counter()
        res = ex.extract(texts)
        seconds = time.perf_counter() - t
        f[f"vllm_prompt_b{batch}_sps"] = round(len(texts) / seconds, 2)
        f[f"vllm_prompt_b{batch}_mfu"] = self.mfu((int(res.prompt_tokens.sum()) - ex.prefix_tokens * len(texts)) / seconds)
        texts = self._texts(gen_batch)
        t = time.perf_counter()
        res = gen.extract(texts)
        seconds = time.perf_counter() - t
        name = f"vllm_gen{tokens}_b{gen_batch}"
        f[f"{name}_sps"] = round(len(texts) / seconds, 3)
        f[f"{name}_mfu"] = self.mfu((int(res.prompt_tokens.sum()) - ex.prefix_tokens * len(texts)
                                     + int(res.num_tokens.sum())) / seconds)
        gen.close()

    def free(self) -> None:
        """Release the transformers model: vLLM's engines and the online runs load their own."""
        if hasattr(self, "loaded"):
            del self.loaded
        self.empty_cache()

    def empty_cache(self) -> None:
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def batch_invariance(self) -> None:
        from hsrl.llm.transformers_backend import TransformersExtractor

        if not hasattr(self, "loaded"):  # freed for the online runs: load it again
            self.load()

        n, tokens, b1 = self.args.inv_samples, self.args.gen_tokens, self.args.b1_samples
        texts = self._texts(n)
        runs = {}
        for batch in self.args.inv_batches:
            ex = TransformersExtractor(self._spec(tokens=tokens, temperature=0.6), model=self.loaded, batch_size=batch)
            subset = texts[:b1] if batch == 1 else texts
            runs[batch] = ex.extract(subset).generated_ids
        same_all = [all(runs[b][i] == runs[1][i] for b in runs) for i in range(b1)]
        big = [b for b in runs if b != 1]
        same_big = [all(runs[b][i] == runs[big[0]][i] for b in big) for i in range(n)]
        f = self.figures
        f["batch_invariance_batches"] = list(self.args.inv_batches)
        f["batch_invariance_identical_fraction"] = round(sum(same_all) / len(same_all), 4)
        f["batch_invariance_identical_fraction_samples"] = len(same_all)
        f[f"batch_invariance_identical_fraction_b{big[0]}_vs_b{big[-1]}"] = round(sum(same_big) / n, 4)

    def online(self, work: Path) -> None:
        from hsrl.rl.ppo import OnlineConfig, train_online

        f = self.figures
        runs = [("online_llm", e, False) for e in self.args.online_envs]
        runs += [("online_nollm", e, True) for e in self.args.online_envs]
        for name, envs, no_llm in runs:
            key = f"{name}_{envs}"
            if self.left_s() <= 0:
                f[f"{key}_error"] = "skipped: the budget was spent"
                continue
            try:
                self.free()  # the last run's model and buffers, so that each peak is the run's own
                self.reset_memory()
                config = OnlineConfig(env=self.args.env, envs=envs, steps=envs * self.args.online_num_steps * 3,
                                      num_steps=self.args.online_num_steps, skip_n=self.args.skip_n, tokens=1,
                                      hidden=not no_llm,
                                      model=self.model_path, dtype="bfloat16", device=self.device,
                                      llm_batch_size=self.args.online_llm_batch, out=str(work / key),
                                      progress=False, save_every=10**9)
                summary = train_online(config)
                f[f"{key}_sps"] = round(summary["sps"], 1)
                f[f"{key}_time_share"] = {k: round(v, 4) for k, v in summary["time_share"].items()}
                f[f"{key}_peak_gb"] = self.peak_gb()
                f[f"{key}_jax_peak_gb"] = _jax_peak_gb()
            except Exception as err:  # noqa: BLE001
                f[f"{key}_error"] = _one_line(err)
                traceback.print_exc(file=sys.stderr)
            self.save()


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def _layer_states(result) -> np.ndarray:
    """(B, H) float32 states of the spec's one layer from an ExtractionResult."""
    (states,) = result.hidden.values()
    return np.asarray(states, np.float32)


def drift_compare(test: np.ndarray, ref: np.ndarray) -> dict:
    """How far `test` (B, H) states are from `ref` (float32, the reference): per-sample cosine (min, mean), per-sample
    relative L2 difference |test - ref| / |ref| (max, mean), and max |test - ref| / max |ref| over all elements."""
    test, ref = np.asarray(test, np.float64), np.asarray(ref, np.float64)
    if test.shape != ref.shape or test.ndim != 2 or len(ref) == 0:
        raise ValueError(f"states to compare must be two (B, H) arrays of one shape, got {test.shape} and {ref.shape}")
    norm_t, norm_r = np.linalg.norm(test, axis=1), np.linalg.norm(ref, axis=1)
    cosine = np.sum(test * ref, axis=1) / (norm_t * norm_r)
    rel = np.linalg.norm(test - ref, axis=1) / norm_r
    return {"drift_samples": int(len(ref)), "drift_cosine_min": float(cosine.min()),
            "drift_cosine_mean": float(cosine.mean()), "drift_rel_diff_max": float(rel.max()),
            "drift_rel_diff_mean": float(rel.mean()),
            "drift_max_abs_diff_over_max_abs": float(np.abs(test - ref).max() / np.abs(ref).max())}


def float32_reference(args) -> int:
    """The drift's CPU side (a process of its own): the texts' prompt-only states in float32 on the CPU, written to
    the .npy after every chunk (so a run stopped at the budget's end still leaves the samples it finished)."""
    import torch

    from hsrl.llm import ExtractionSpec
    from hsrl.llm.transformers_backend import TransformersExtractor

    texts_path, out = (Path(p) for p in args.float32_reference)
    torch.set_num_threads(args.reference_threads or 1)
    texts = json.loads(texts_path.read_text())
    spec = ExtractionSpec(model=args.model, dtype="float32", variant=args.variant)
    ex = TransformersExtractor(spec, device="cpu", batch_size=args.reference_chunk)
    done = []
    for i in range(0, len(texts), args.reference_chunk):
        done.append(_layer_states(ex.extract(texts[i:i + args.reference_chunk])))
        tmp = out.with_name(out.name + ".tmp.npy")
        np.save(tmp, np.concatenate(done))
        tmp.replace(out)
        print(f"float32 reference: {sum(len(d) for d in done)} of {len(texts)}", flush=True)
    return 0


def _jax_peak_gb() -> float | None:
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return round(stats["peak_bytes_in_use"] / 2**30, 2) if "peak_bytes_in_use" in stats else None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--small", action="store_true", help="test size: the same code in seconds on CPU")
    p.add_argument("--model", default=None, help="a model folder (default: build the random reference model)")
    p.add_argument("--skip", nargs="*", default=[],
                   choices=["prompt", "generation", "drift", "vllm", "invariance", "online"])
    p.add_argument("--budget-s", type=float, default=None,
                   help="start no part after this many seconds (default: 540 on a GPU, none with --small)")
    p.add_argument("--json-out", default=None, help="also write the figures to this file, rewritten after each part")
    p.add_argument("--reference-threads", type=int, default=None,
                   help="CPU threads of the float32 reference process (default: the CPU count less 4)")
    # the float32 reference process (started by the suite itself): TEXTS.json OUT.npy, with --model and --variant
    p.add_argument("--float32-reference", nargs=2, default=None, help=argparse.SUPPRESS)
    p.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    p.add_argument("--reference-chunk", type=int, default=8, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    full = dict(env="Craftax-Symbolic-v1", obs_envs=256, batches=(64, 256), repeats=2, gen_batches=(64, 256),
                gen_tokens=256, drift_samples=64, inv_samples=64, inv_batches=(1, 16, 64), b1_samples=8,
                online_envs=(128, 1024), online_num_steps=64, online_llm_batch=256, skip_n=25)
    small = dict(env="Craftax-Classic-Symbolic-v1", obs_envs=16, batches=(8, 16), repeats=1, gen_batches=(8, 16),
                 gen_tokens=8, drift_samples=8, inv_samples=8, inv_batches=(1, 4, 8), b1_samples=2, online_envs=(8, 16),
                 online_num_steps=8, online_llm_batch=16, skip_n=4)
    for k, v in (small if args.small else full).items():
        setattr(args, k, v)
    if args.budget_s is None and not args.small and args.float32_reference is None:
        args.budget_s = 540.0
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.float32_reference:
        return float32_reference(args)
    suite = Suite(args)
    f = suite.figures
    with tempfile.TemporaryDirectory(prefix="gpu_suite_") as tmp:
        work = Path(tmp)
        suite.part("environment", suite.environment)
        suite.part("build", lambda: suite.build_model(work))
        suite.part("observations", suite.observations)
        drift = "drift" not in args.skip and "model" in f and hasattr(suite, "texts")
        if drift:  # the float32 CPU process starts first: it runs beside everything below
            suite.part("drift_start", lambda: suite.start_reference(work))
        if "model" in f:
            suite.part("load", suite.load)
        ready = hasattr(suite, "loaded") and hasattr(suite, "texts")
        # most wanted first: the budget skips what comes last
        for name, fn in (("prompt", suite.prompt_only), ("generation", suite.generation), ("drift", suite.drift_gpu),
                         ("free", suite.free), ("vllm", suite.vllm), ("online", lambda: suite.online(work)),
                         ("invariance", suite.batch_invariance)):
            if name in args.skip:
                f[f"{name}_error"] = "skipped (--skip)"
            elif name == "free":
                suite.free()
            elif name == "online":
                if "model" in f:
                    suite.part(name, fn)
            elif not ready:
                f[f"{name}_error"] = "skipped: the model or the observations are missing (see above)"
            else:
                suite.part(name, fn)
        if suite.reference is not None:
            try:
                if not suite.drift_done:
                    suite.part("drift_compare", suite.drift_compare, always=True)
            finally:
                if suite.reference.poll() is None:
                    suite.reference.kill()
                    suite.reference.wait()
        suite.free()
    f["wall_s"] = round(time.perf_counter() - suite.start, 1)
    suite.save()
    for key, value in f.items():
        print(f"{key:>48}: {value}")
    record("gpu_suite", f, write=not args.small)  # test-size figures are no measurement
    return 0


if __name__ == "__main__":
    sys.exit(main())
