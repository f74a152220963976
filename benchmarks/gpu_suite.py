"""One command for a lent GPU: the reference model at full size (random weights), measured where users care.

    python benchmarks/gpu_suite.py                       # on one GPU; sized for ~8 minutes with the model build
    python benchmarks/gpu_suite.py --device cpu --small  # the same code at test size, in seconds (a test runs it)

Builds the random full-size Qwen3-4B-Thinking-2507 (`hsrl make-model`; or --model FOLDER), takes full-Craftax text
observations from a reset of --obs-envs environments, and measures, each part on its own (a part that fails or cannot
run records why, and the rest still runs):

- prompt-only extraction (transformers), samples/s at batch 64 and 256, with and without the shared-prefix cache;
  the vLLM backend's too when `vllm` imports;
- generation of 256 tokens then pooling, samples/s at batch 64 (transformers; vLLM when present);
- model FLOPs utilisation of each: 2 x parameters x tokens computed per second / the GPU's bf16 dense peak (a small
  table: H100, H200, A100, L40S; none on CPU). Tokens computed: the prompt tokens run (the shared prefix once when
  the cache holds it) plus the generated tokens;
- online PPO steps/s at 128 envs, skip-n 25, --tokens 1 with the model, beside --no-hidden at 128 and 1024 envs, with
  the time shares (first update, which compiles, left out);
- peak GPU memory of each part (torch's allocator; JAX's for the --no-hidden runs);
- batch invariance of generation in bfloat16: the fraction of 64 samples whose 256 generated tokens are identical at
  batch sizes 1, 16 and 64 (batch 1 on the first 8 of them, to fit the time).

Not yet run on a GPU (the estimate: build 1-2 min, prompt-only 1 min, generation and batch invariance 2-3 min,
vLLM 2-3 min when installed, online 3-4 min); `--skip` leaves parts out. Prints one line per figure, then every
figure as one JSON line (the last line). `--small` scales everything down
(2-block model of width 64, Craftax-Classic, batches 8/16, 8 tokens, 8 and 16 envs, skip-n 4 so the short online
runs call the model) so CI runs the same code. JAX's GPU preallocation is turned off (XLA_PYTHON_CLIENT_PREALLOCATE),
as torch holds the model on the same GPU.
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

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

    # ---- bookkeeping ---------------------------------------------------------------------------------------------

    def part(self, name: str, fn) -> None:
        """Run one part; on failure record `<name>_error` (one line) and go on."""
        t = time.perf_counter()
        try:
            fn()
        except Exception as err:  # noqa: BLE001  (a failed part must not stop the others)
            self.figures[f"{name}_error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            traceback.print_exc(file=sys.stderr)
        self.figures[f"{name}_wall_s"] = round(time.perf_counter() - t, 1)

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
        import numpy as np

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

        batch, tokens = self.args.gen_batch, self.args.gen_tokens
        ex = TransformersExtractor(self._spec(tokens=tokens, temperature=0.6), model=self.loaded, batch_size=batch)
        ex.extract(self._texts(2))  # warm-up
        self.reset_memory()
        texts = self._texts(batch)
        t = time.perf_counter()
        res = ex.extract(texts)
        seconds = time.perf_counter() - t
        computed = int(res.prompt_tokens.sum()) - ex.prefix_tokens * len(texts) + int(res.num_tokens.sum())
        f, name = self.figures, f"hf_gen{tokens}_b{batch}"
        f[f"{name}_sps"] = round(len(texts) / seconds, 3)
        f[f"{name}_mfu"] = self.mfu(computed / seconds)
        f[f"{name}_peak_gb"] = self.peak_gb()
        f[f"{name}_generated_tokens_mean"] = round(float(res.num_tokens.mean()), 1)

    def vllm(self) -> None:
        if not str(self.figures.get("vllm", "")).split(".")[0].isdigit():
            raise RuntimeError(f"vllm not importable ({self.figures.get('vllm')}): vLLM rows skipped")
        from hsrl.llm.vllm_backend import VLLMExtractor

        f, tokens, gen_batch = self.figures, self.args.gen_tokens, self.args.gen_batch
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
        import gc

        import torch

        del self.loaded
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def batch_invariance(self) -> None:
        from hsrl.llm.transformers_backend import TransformersExtractor

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
        runs = [("online_llm", self.args.online_envs[0], False)] + [("online_nollm", e, True) for e in self.args.online_envs]
        for name, envs, no_llm in runs:
            key = f"{name}_{envs}"
            try:
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
                f[f"{key}_error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                traceback.print_exc(file=sys.stderr)


def _jax_peak_gb() -> float | None:
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return round(stats["peak_bytes_in_use"] / 2**30, 2) if "peak_bytes_in_use" in stats else None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--small", action="store_true", help="test size: the same code in seconds on CPU")
    p.add_argument("--model", default=None, help="a model folder (default: build the random reference model)")
    p.add_argument("--skip", nargs="*", default=[], choices=["prompt", "generation", "vllm", "invariance", "online"])
    args = p.parse_args(argv)
    full = dict(env="Craftax-Symbolic-v1", obs_envs=256, batches=(64, 256), repeats=2, gen_batch=64, gen_tokens=256,
                inv_samples=64, inv_batches=(1, 16, 64), b1_samples=8, online_envs=(128, 1024), online_num_steps=64,
                online_llm_batch=128, skip_n=25)
    small = dict(env="Craftax-Classic-Symbolic-v1", obs_envs=16, batches=(8, 16), repeats=1, gen_batch=8,
                 gen_tokens=8, inv_samples=8, inv_batches=(1, 4, 8), b1_samples=2, online_envs=(8, 16),
                 online_num_steps=8, online_llm_batch=16, skip_n=4)
    for k, v in (small if args.small else full).items():
        setattr(args, k, v)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    suite = Suite(args)
    with tempfile.TemporaryDirectory(prefix="gpu_suite_") as tmp:
        work = Path(tmp)
        suite.part("environment", suite.environment)
        suite.part("build", lambda: suite.build_model(work))
        if "model" in suite.figures:
            suite.part("load", suite.load)
        suite.part("observations", suite.observations)
        ready = hasattr(suite, "loaded") and hasattr(suite, "texts")
        for name, fn in (("prompt", suite.prompt_only), ("generation", suite.generation),
                         ("invariance", suite.batch_invariance), ("free", suite.free), ("vllm", suite.vllm)):
            if name in args.skip:
                suite.figures[f"{name}_error"] = "skipped (--skip)"
            elif not ready:
                suite.figures[f"{name}_error"] = "skipped: the model or the observations are missing (see above)"
            elif name == "free":
                suite.free()
            else:
                suite.part(name, fn)
        if "online" in args.skip:
            suite.figures["online_error"] = "skipped (--skip)"
        elif "model" in suite.figures:
            suite.part("online", lambda: suite.online(work))
    suite.figures["wall_s"] = round(time.perf_counter() - start, 1)
    for key, value in suite.figures.items():
        print(f"{key:>48}: {value}")
    print(json.dumps(suite.figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
