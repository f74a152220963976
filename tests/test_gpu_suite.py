"""benchmarks/gpu_suite.py at test size on CPU (`--device cpu --small`): the same code a lent GPU runs, every figure
printed as one JSON line, parts that cannot run (vLLM not installed, no GPU) recorded with the reason."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_suite_small_on_cpu_prints_every_figure():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--device", "cpu", "--small"],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    f = json.loads(proc.stdout.strip().splitlines()[-1])
    errors = {k: v for k, v in f.items() if k.endswith("_error")}
    try:
        import vllm  # noqa: F401
    except ImportError:
        assert errors.pop("vllm_error").startswith("RuntimeError: vllm not importable")
    assert errors == {}
    assert f["parameters"] > 0 and f["hidden_size"] == 64 and f["gpu_peak_bf16_tflops"] is None
    for batch in (8, 16):
        for cache in ("cache", "nocache"):
            assert f[f"hf_prompt_b{batch}_{cache}_sps"] > 0
            assert f"hf_prompt_b{batch}_{cache}_mfu" in f and f"hf_prompt_b{batch}_{cache}_peak_gb" in f
    assert f["prefix_tokens"] > 1000 and f["prompt_tokens_mean"] > f["prefix_tokens"]
    assert f["hf_gen8_b8_sps"] > 0 and f["hf_gen8_b8_generated_tokens_mean"] > 0
    assert 0 <= f["batch_invariance_identical_fraction"] <= 1 and f["batch_invariance_batches"] == [1, 4, 8]
    for key in ("online_llm_8", "online_nollm_8", "online_nollm_16"):
        assert f[f"{key}_sps"] > 0 and set(f[f"{key}_time_share"]) >= {"llm", "env_policy", "update", "other"}
        assert f"{key}_peak_gb" in f and f"{key}_jax_peak_gb" in f
    assert f["online_llm_8_time_share"]["llm"] > 0 and f["online_nollm_8_time_share"]["llm"] == 0


def test_gpu_peak_table():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_suite import gpu_peak_tflops

    assert gpu_peak_tflops("NVIDIA H200") == 989.0 and gpu_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0 and gpu_peak_tflops("NVIDIA L40S") == 362.0
    assert gpu_peak_tflops("Tesla T4") is None and gpu_peak_tflops(None) is None
