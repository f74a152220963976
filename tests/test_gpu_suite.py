"""benchmarks/gpu_suite.py at test size on CPU (`--device cpu --small`): the same code a lent GPU runs, every figure
printed as one JSON line, parts that cannot run (vLLM not installed, no GPU) recorded with the reason; its budget;
the bfloat16-vs-float32 comparison; benchmarks/gpu_carry.sh's shape (it fetches from PyPI, so it is run by hand)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITE = str(ROOT / "benchmarks" / "gpu_suite.py")


@pytest.mark.slow  # 80 s on CPU: the suite is for a GPU; run with `pytest -m slow`
def test_gpu_suite_small_on_cpu_prints_every_figure(tmp_path):
    out = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, SUITE, "--device", "cpu", "--small", "--json-out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    f = json.loads(proc.stdout.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == f  # the figures file holds what the last line prints
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
    for batch in (8, 16):
        assert f[f"hf_gen8_b{batch}_sps"] > 0 and f[f"hf_gen8_b{batch}_generated_tokens_mean"] > 0
        assert f"hf_gen8_b{batch}_mfu" in f and f"hf_gen8_b{batch}_peak_gb" in f
    assert 0 <= f["batch_invariance_identical_fraction"] <= 1 and f["batch_invariance_batches"] == [1, 4, 8]
    for key in ("online_llm_8", "online_llm_16", "online_nollm_8", "online_nollm_16"):
        assert f[f"{key}_sps"] > 0 and set(f[f"{key}_time_share"]) >= {"llm", "env_policy", "update", "other"}
        assert f"{key}_peak_gb" in f and f"{key}_jax_peak_gb" in f
    assert f["online_llm_16_time_share"]["llm"] > 0 and f["online_nollm_16_time_share"]["llm"] == 0
    # bfloat16 (here on the CPU too) against the float32 process: close, but not equal
    assert f["drift_samples"] == 8 and f["drift_float32_threads"] >= 1
    assert 0.99 < f["drift_cosine_min"] <= f["drift_cosine_mean"] < 1
    assert 0 < f["drift_rel_diff_mean"] <= f["drift_rel_diff_max"] < 0.1 and f["drift_max_abs_diff_over_max_abs"] > 0


def test_gpu_suite_skips_what_the_budget_leaves_no_time_for(tmp_path):
    proc = subprocess.run([sys.executable, SUITE, "--device", "cpu", "--small", "--budget-s", "0"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    f = json.loads(proc.stdout.strip().splitlines()[-1])
    assert f["environment_error"].startswith("skipped: the budget") and "model" not in f
    assert "drift_start_wall_s" not in f and "online_wall_s" not in f  # nothing started, nothing left running


def test_drift_compare():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_suite import drift_compare

    rng = np.random.default_rng(0)
    ref = rng.standard_normal((4, 32)).astype(np.float32)
    same = drift_compare(ref, ref)
    assert same["drift_samples"] == 4 and same["drift_cosine_min"] == pytest.approx(1.0)
    assert same["drift_rel_diff_max"] == 0 and same["drift_max_abs_diff_over_max_abs"] == 0
    moved = ref.copy()
    moved[2] *= 1.1  # one sample scaled: same direction, 10% longer
    moved[3] = -ref[3]  # one reversed
    d = drift_compare(moved, ref)
    assert d["drift_cosine_min"] == pytest.approx(-1.0) and d["drift_rel_diff_max"] == pytest.approx(2.0)
    assert d["drift_rel_diff_mean"] == pytest.approx((0.1 + 2.0) / 4, rel=1e-5)
    with pytest.raises(ValueError, match="one shape"):
        drift_compare(ref[:3], ref)


def test_gpu_peak_table():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_suite import gpu_peak_tflops

    assert gpu_peak_tflops("NVIDIA H200") == 989.0 and gpu_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0 and gpu_peak_tflops("NVIDIA L40S") == 362.0
    assert gpu_peak_tflops("Tesla T4") is None and gpu_peak_tflops(None) is None


def test_gpu_carry_script_is_valid_and_its_wheel_folder_ignored():
    script = ROOT / "benchmarks" / "gpu_carry.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    ignored = subprocess.run(["git", "check-ignore", "-q", ".whl/craftax-1.6.1-py3-none-any.whl"], cwd=ROOT)
    assert ignored.returncode == 0, ".whl/ (the device's wheels) must be git-ignored"
    text = script.read_text()
    assert "--python-version 3.12" in text and "gpu_suite.py --json-out" in text
