"""The reference model at full size on CPU: random Qwen3-4B-Thinking-2507 weights (`hsrl make-model`) in bfloat16.

    python benchmarks/bench_reference.py [--model FOLDER] [--env Craftax-Classic-Symbolic-v1] [--small]

Builds the model folder (unless --model names one), collects 4 observations by random play, labels them with
`hsrl label` prompt-only and with `--tokens 8`, serves one request (`hsrl serve`'s app, in-process) and checks that
every path gives vectors of the model's width (2560). Prints the times, the prompt lengths and the peak resident
memory of the process (which must fit a 24 GB machine); its last line is one JSON object. `--small` runs the same at
test size (2 blocks of width 64) in seconds. bfloat16 because float32 (hsrl's CPU default) would need 16 GB for the
weights alone.
"""

import argparse
import resource
import tempfile
import time
from pathlib import Path
from record import record


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: kilobytes


def run(model: str | None, env: str, small: bool, work: Path, tokens: int = 8) -> dict:
    import numpy as np

    from hsrl.data import list_chunks, read_chunk
    from hsrl.data.collect import CollectConfig, collect
    from hsrl.data.label import LabelConfig, label_dataset
    from hsrl.llm.make_model import make_model

    figures: dict = {"env": env, "small": small, "dtype": "bfloat16", "device": "cpu"}
    t = time.perf_counter()
    if model is None:
        model = str(make_model("qwen3-4b-thinking", work / "model", small=small))
        figures["make_model_s"] = round(time.perf_counter() - t, 1)
        figures["make_model_peak_rss_gb"] = round(peak_rss_gb(), 2)
    collect(CollectConfig(env=env, envs=2, steps=4, chunk_steps=2, out=str(work / "raw"), seed=0, progress=False))
    for name, n in (("prompt_only", 1), (f"tokens_{tokens}", tokens)):
        t = time.perf_counter()
        summary = label_dataset(LabelConfig(str(work / "raw"), str(work / name), model=model, tokens=n,
                                            dtype="bfloat16", device="cpu", batch_size=4, progress=False))
        if summary.failed or summary.samples != 4:
            raise RuntimeError(f"labelling {name} failed: {summary.report()}")
        chunk = read_chunk(list_chunks(work / name)[0])
        width = chunk["hidden_state"].shape[1]
        figures[f"{name}_s"] = round(time.perf_counter() - t, 1)
        figures[f"{name}_load_s"] = round(summary.load_seconds, 1)
        figures[f"{name}_width"] = int(width)
        if not np.isfinite(chunk["hidden_state"]).all():
            raise RuntimeError(f"{name}: non-finite hidden states")
        if n > 1:
            figures[f"{name}_generated_len"] = chunk["generated_len"].tolist()
    figures["serve_s"], figures["serve_width"] = _serve_one(model, env, work)
    figures["peak_rss_gb"] = round(peak_rss_gb(), 2)
    return figures


def _serve_one(model: str, env: str, work: Path) -> tuple[float, int]:
    """One request to the hidden-state server (in-process, prompt-only) for the first collected observation."""
    from hsrl.data import list_chunks, read_chunk
    from hsrl.env.catalog import env_info
    from hsrl.llm import ExtractionSpec
    from hsrl.serve.client import HiddenStateClient
    from hsrl.serve.server import ServerSettings, create_app, serve_in_thread

    obs = read_chunk(list_chunks(work / "raw")[0])["obs"][:1]
    spec = ExtractionSpec(model=model, dtype="bfloat16", variant=env_info(env).variant)
    t = time.perf_counter()
    server, thread, port = serve_in_thread(create_app(spec, ServerSettings(env=env), device="cpu"))
    try:
        with HiddenStateClient(f"http://127.0.0.1:{port}") as client:
            client.wait_ready(timeout=900)
            hidden = client.hidden_states(observations=obs)
    finally:
        server.should_exit = True
        thread.join(30)
    return round(time.perf_counter() - t, 1), int(hidden.shape[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="a model folder (default: build one with make-model)")
    p.add_argument("--env", default="Craftax-Classic-Symbolic-v1")
    p.add_argument("--small", action="store_true", help="test-size model of the same architecture")
    p.add_argument("--tokens", type=int, default=8)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_reference_") as work:
        figures = run(args.model, args.env, args.small, Path(work), args.tokens)
    for key, value in figures.items():
        print(f"{key:>28}: {value}")
    record("bench_reference_small" if args.small else "bench_reference", figures)


if __name__ == "__main__":
    main()
