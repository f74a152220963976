"""Hidden-state extraction throughput, and the speed-up of the shared-prefix KV cache.

Measures, on this machine's device (CPU float32 unless CUDA is present):
  - MiniLM (the embedded encoder), prompt-only: samples/s and prompt tokens/s;
  - a tiny random Qwen3 (built here, as in the tests), prompt-only and generation: samples/s, prompt tokens/s and
    generated tokens/s;
  - the prefix cache: the tiny Qwen3 with the 'chat' prompt (system + rules + few-shot prefix, >= 1000 tokens) and
    observations of about 200 tokens, the same batches with and without the cache; ratio = time without / time with,
    and the largest difference between the two results (they must agree within float tolerance);
  - where vLLM is installed, the vLLM backend on the same model and prompts (prompt-only, timed interleaved with the
    transformers backend, and generation), and the largest difference between the two backends' prompt-only states.
    Elsewhere the vLLM rows are skipped (said so in the output).
  - history (prompt programs, `--history K`): the tiny Qwen3 'chat' prompt showing K = 0, 2, 4 previous observations
    (with their actions) before the current one, prompt-only with the shared-prefix cache: prompt tokens per sample
    and samples/s for each K, that the cached prefix is the same for every K (a history prompt keeps the cache for the
    fixed prefix), and for the largest K the speed-up of the cache with the largest difference it makes;
  - image input: a tiny random Qwen3-VL of the same text size (built here, as in the tests) reading 63 x 63 frames
    (a Craftax-Classic-Pixels observation's size; 16 image tokens each), input 'image', prompt-only (with and
    without its prefix cache: everything before the image) and generation, and its time relative to the tiny Qwen3
    reading text (prompt-only, prefix cache on).

Observations are synthetic texts in the renderer's format (random tiles, inventory and stats), so no Craftax rollout
is needed. Timings exclude loading and the one-off prefix computation (a warm-up batch runs first). The last line is
one JSON object with the figures.

    python benchmarks/bench_extract.py [--samples 32] [--batch-size 16] [--tokens 16]
"""

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from hsrl.llm import ExtractionSpec  # noqa: E402
from hsrl.llm.models import load_model, load_vision_model  # noqa: E402
from hsrl.llm.transformers_backend import TransformersExtractor  # noqa: E402
from hsrl.llm.vision_backend import VisionExtractor  # noqa: E402
from hsrl.text import MAP_HEADER  # noqa: E402
from tiny_qwen import build_tiny_qwen  # noqa: E402
from tiny_vlm import build_tiny_vlm  # noqa: E402
from record import record  # noqa: E402

TILES = ("tree", "stone", "water", "coal", "iron", "diamond", "crafting_table", "furnace", "cow on grass",
         "zombie on grass", "skeleton on path", "sand", "lava", "plant")
ITEMS = ("wood", "stone", "coal", "iron", "diamond", "sapling", "wood_pickaxe", "stone_pickaxe", "wood_sword")


def synthetic_observations(n: int, tiles: int, seed: int = 0) -> list[str]:
    """n Classic-style observations with about `tiles` map lines each."""
    rng = np.random.default_rng(seed)
    out = []
    cells = [(r, c) for r in range(-3, 4) for c in range(-4, 5) if (r, c) != (0, 0)]
    for _ in range(n):
        k = int(np.clip(rng.normal(tiles, 3), 1, len(cells)))
        chosen = sorted(cells[i] for i in rng.choice(len(cells), size=k, replace=False))
        lines = [MAP_HEADER] + [f"{r}, {c}: {TILES[rng.integers(len(TILES))]}" for r, c in chosen]
        held = rng.choice(len(ITEMS), size=rng.integers(1, 5), replace=False)
        lines.append("Inventory: " + ", ".join(f"{ITEMS[i]} {rng.integers(1, 10)}" for i in sorted(held)))
        h, f, d, e = rng.integers(0, 10, size=4)
        lines.append(f"Health: {h}, Food: {f}, Drink: {d}, Energy: {e}")
        lines.append(f"Facing: {('left', 'right', 'up', 'down')[rng.integers(4)]}")
        light = round(float(rng.uniform(0, 1)), 2)
        lines.append(f"Time: {'night' if light < 0.5 else 'day'}, light level {light:g}")
        lines.append(f"Sleeping: {'no' if rng.random() < 0.9 else 'yes'}")
        out.append("\n".join(lines))
    return out


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [l.split(":", 1)[1].strip() for l in cpuinfo.read_text().splitlines() if l.startswith("model name")]
        if names:
            return f"CPU {names[0]} x{len(names)}"
    return f"CPU {platform.processor() or platform.machine()}"


def synthetic_frames(n: int, seed: int = 0) -> np.ndarray:
    """n uint8 frames of a Craftax-Classic-Pixels observation's size: 7 x 7-pixel blocks of random colours."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (n, 9, 9, 3), dtype=np.uint8)
    return blocks.repeat(7, axis=1).repeat(7, axis=2)


def timed(extractors: list, observations: list, repeats: int, before: list | None = None):
    """Per extractor: (best seconds, result). One warm-up batch each, then the timed runs interleaved (ABAB...),
    so that load from other processes on a shared machine hits every extractor alike. observations[i] is extractor
    i's: texts, or for extractors that read images frames (passed as `images`). before[i], if given, runs
    (untimed) before each of extractor i's runs."""

    def run(ex, obs):
        return ex.extract(None, images=np.stack(obs)) if ex.spec.reads_images else ex.extract(obs)

    for ex, obs in zip(extractors, observations):
        run(ex, obs[: ex.batch_size])
    best = [float("inf")] * len(extractors)
    results = [None] * len(extractors)
    for _ in range(repeats):
        for i, (ex, obs) in enumerate(zip(extractors, observations)):
            if before is not None and before[i] is not None:
                before[i]()
            start = time.perf_counter()
            results[i] = run(ex, obs)
            best[i] = min(best[i], time.perf_counter() - start)
    return list(zip(best, results))


def rates(name: str, seconds: float, result, n: int) -> dict:
    prompt = int(result.prompt_tokens.sum())
    generated = int(sum(len(g) for g in result.generated_ids))
    row = {
        "samples_per_s": n / seconds,
        "prompt_tokens_per_s": prompt / seconds,
        "mean_prompt_tokens": prompt / n,
    }
    if generated:
        row["generated_tokens_per_s"] = generated / seconds
        row["mean_generated_tokens"] = generated / n
    shown = ", ".join(f"{k} {v:,.1f}" for k, v in row.items())
    print(f"{name:<34} {seconds:7.2f} s  {shown}")
    return row


def history_rows(figures: dict, qwen, spec, observations: list, args) -> None:
    """Prompt-only extraction of the tiny Qwen3 'chat' prompt with K previous observations per sample (each sample's
    history: other synthetic observations and random actions), prefix cache on; the cache's speed-up at the largest
    K. Every K shares one prefix: the history lies after it."""
    rng = np.random.default_rng(2)
    earlier = synthetic_observations(args.samples * max(args.histories), args.tiles, seed=3)
    rows, prefixes, kept = {}, set(), True
    for k in args.histories:
        ex = TransformersExtractor(spec.replace(history=k), model=qwen, batch_size=args.batch_size)
        history = [[(earlier[i * max(args.histories) + j], int(rng.integers(17))) for j in range(k)]
                   for i in range(args.samples)]

        class WithHistory:  # `timed` calls extract(observations); this one passes the history along
            def __init__(self, extractor):
                self.extractor, self.spec, self.batch_size = extractor, extractor.spec, extractor.batch_size

            def extract(self, obs):
                return self.extractor.extract(obs, history=history[: len(obs)])

        [(seconds, result)] = timed([WithHistory(ex)], [observations], args.repeats)
        rows[str(k)] = rates(f"tiny qwen history {k} (cache)", seconds, result, args.samples)
        rows[str(k)]["prefix_tokens"] = ex.prefix_tokens
        prefixes.add(tuple(ex._prefix_ids))
        kept = kept and ex.prefix_cache
        if k == max(args.histories):
            plain = TransformersExtractor(spec.replace(history=k), model=qwen, batch_size=args.batch_size,
                                          prefix_cache=False)
            (t_cached, r_cached), (t_plain, r_plain) = timed([WithHistory(ex), WithHistory(plain)],
                                                             [observations] * 2, args.repeats)
            figures[f"history{k}_prefix_cache_speedup"] = t_plain / t_cached
            figures[f"history{k}_prefix_cache_max_abs_diff"] = float(np.abs(r_cached.hidden_state
                                                                            - r_plain.hidden_state).max())
    figures["history"] = rows
    figures["history_prefix_kept"] = bool(kept and len(prefixes) == 1)
    k = max(args.histories)
    tokens = ", ".join(f"K={h} {r['mean_prompt_tokens']:.0f}" for h, r in rows.items())
    speed = ", ".join(f"K={h} {r['samples_per_s']:.1f}" for h, r in rows.items())
    print(f"history: prompt tokens per sample {tokens}; samples/s {speed}; one cached prefix "
          f"for every K: {figures['history_prefix_kept']}; prefix cache at K={k}: "
          f"{figures[f'history{k}_prefix_cache_speedup']:.2f}x (max |diff| "
          f"{figures[f'history{k}_prefix_cache_max_abs_diff']:.2e})")


def vllm_rows(figures: dict, spec, gen_spec, transformers_prompt, transformers_generation, observations, args):
    """The vLLM backend on the same model and prompts, next to the transformers backend (prefix cache on)."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        print("vLLM rows skipped: vllm is not installed (pip install -e '.[vllm]', see the README)")
        figures["vllm"] = "not installed"
        return
    from hsrl.llm.vllm_backend import VLLMExtractor

    start = time.perf_counter()
    prompt_only = VLLMExtractor(spec.replace(backend="vllm"), batch_size=args.batch_size)
    generation = VLLMExtractor(gen_spec.replace(backend="vllm"), batch_size=args.batch_size, engine=prompt_only.engine)
    figures["vllm_start_s"] = time.perf_counter() - start  # both engines: extraction and sampling
    warm = synthetic_observations(1, args.tiles, seed=1)

    def forget_prompts():  # vLLM caches whole prompts; keep only the shared prefix, as the transformers backend does
        for engine in (prompt_only.engine, generation.generation_engine):
            engine.reset_prefix_cache()
        generation.extract(warm)

    (t_tf, r_tf), (t_vllm, r_vllm) = timed([transformers_prompt, prompt_only], [observations] * 2, args.repeats,
                                           before=[None, forget_prompts])
    rates("transformers prompt-only (again)", t_tf, r_tf, args.samples)
    figures["vllm_prompt_only"] = rates("vllm prompt-only", t_vllm, r_vllm, args.samples)
    (tg_tf, g_tf), (tg_vllm, g_vllm) = timed([transformers_generation, generation], [observations] * 2, args.repeats,
                                             before=[None, forget_prompts])
    rates(f"transformers generate {args.tokens} (again)", tg_tf, g_tf, args.samples)
    figures["vllm_generation"] = rates(f"vllm generate {args.tokens}", tg_vllm, g_vllm, args.samples)
    figures["vllm_vs_transformers_prompt_only"] = t_tf / t_vllm
    figures["vllm_vs_transformers_generation"] = tg_tf / tg_vllm
    figures["vllm_prompt_only_max_abs_diff"] = float(np.abs(r_vllm.hidden_state - r_tf.hidden_state).max())
    print(f"vLLM vs transformers (same prompts, time transformers / time vLLM): prompt-only "
          f"{figures['vllm_vs_transformers_prompt_only']:.2f}x (max |diff| {figures['vllm_prompt_only_max_abs_diff']:.2e})"
          f", generation {figures['vllm_vs_transformers_generation']:.2f}x (different samplers, different texts); "
          f"engines started in {figures['vllm_start_s']:.1f} s")
    generation.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=16, help="tokens to generate in generation mode")
    parser.add_argument("--tiles", type=int, default=16, help="map lines per observation (~200 tokens at 16)")
    parser.add_argument("--hidden-size", type=int, default=128, help="tiny Qwen3 hidden size")
    parser.add_argument("--layers", type=int, default=4, help="tiny Qwen3 blocks")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (best is kept)")
    parser.add_argument("--histories", type=lambda s: [int(k) for k in s.split(",")], default=[0, 2, 4],
                        help="history K values to measure, comma-separated (default 0,2,4)")
    parser.add_argument("--only-history", action="store_true", help="measure the history rows only")
    args = parser.parse_args()
    torch.manual_seed(0)
    observations = synthetic_observations(args.samples, args.tiles)
    figures: dict = {"device": device_name(), "torch_threads": torch.get_num_threads(), "samples": args.samples,
                     "batch_size": args.batch_size, "tokens": args.tokens}
    print(f"{figures['device']}, {figures['torch_threads']} torch threads")

    if not args.only_history:
        minilm = load_model("minilm")
        ex = TransformersExtractor(ExtractionSpec(model="minilm"), model=minilm, batch_size=args.batch_size)
        [(seconds, result)] = timed([ex], [observations], args.repeats)
        figures["minilm_prompt_only"] = rates("minilm prompt-only", seconds, result, args.samples)

    with tempfile.TemporaryDirectory() as folder:
        path = build_tiny_qwen(Path(folder) / "qwen", hidden_size=args.hidden_size, num_layers=args.layers,
                               num_heads=max(2, args.hidden_size // 64), num_kv_heads=1,
                               max_position_embeddings=16384)
        qwen = load_model(str(path))
        figures["tiny_qwen"] = {"hidden_size": qwen.hidden_size, "layers": qwen.num_layers}
        spec = ExtractionSpec(model=str(path), template="chat", temperature=1.0)
        history_rows(figures, qwen, spec, observations, args)
        if args.only_history:
            record("bench_extract_history", figures, sort_keys=True)
            return

        cached = TransformersExtractor(spec, model=qwen, batch_size=args.batch_size)
        uncached = TransformersExtractor(spec, model=qwen, batch_size=args.batch_size, prefix_cache=False)
        _, ranges = cached.encode(observations)
        figures["prefix_tokens"] = cached.prefix_tokens
        figures["mean_observation_tokens"] = float((ranges[:, 1] - ranges[:, 0]).mean())
        print(f"tiny Qwen3 H={qwen.hidden_size} L={qwen.num_layers}: prefix {cached.prefix_tokens} tokens, "
              f"observation {figures['mean_observation_tokens']:.0f} tokens on average")

        (t_cached, r_cached), (t_uncached, r_uncached) = timed([cached, uncached], [observations] * 2, args.repeats)
        figures["qwen_prompt_only"] = rates("tiny qwen prompt-only (cache)", t_cached, r_cached, args.samples)
        figures["qwen_prompt_only_no_cache"] = rates("tiny qwen prompt-only (no cache)", t_uncached, r_uncached,
                                                     args.samples)

        gen_spec = spec.replace(tokens=args.tokens)
        gen_cached = TransformersExtractor(gen_spec, model=qwen, batch_size=args.batch_size)
        gen_uncached = TransformersExtractor(gen_spec, model=qwen, batch_size=args.batch_size, prefix_cache=False)
        (tg_cached, g_cached), (tg_uncached, g_uncached) = timed([gen_cached, gen_uncached], [observations] * 2,
                                                                 args.repeats)
        figures["qwen_generation"] = rates(f"tiny qwen generate {args.tokens} (cache)", tg_cached, g_cached,
                                           args.samples)
        figures["qwen_generation_no_cache"] = rates(f"tiny qwen generate {args.tokens} (no cache)", tg_uncached,
                                                    g_uncached, args.samples)
        vllm_rows(figures, spec, gen_spec, cached, gen_cached, observations, args)

        # image input: a tiny Qwen3-VL with the same text model size reads frames instead of text
        vlm_path = build_tiny_vlm(Path(folder) / "vlm", hidden_size=args.hidden_size, num_layers=args.layers,
                                  num_heads=max(2, args.hidden_size // 64), num_kv_heads=1)
        vlm = load_vision_model(str(vlm_path))
        frames = list(synthetic_frames(args.samples))
        image_spec = ExtractionSpec(model=str(vlm_path), input="image", template="chat", temperature=1.0)
        image = VisionExtractor(image_spec, model=vlm, batch_size=args.batch_size)
        image_uncached = VisionExtractor(image_spec, model=vlm, batch_size=args.batch_size, prefix_cache=False)
        image_gen = VisionExtractor(image_spec.replace(tokens=args.tokens), model=vlm, batch_size=args.batch_size)
        (t_image, r_image), (t_image_uncached, r_image_uncached), (t_text, _) = timed(
            [image, image_uncached, cached], [frames, frames, observations], args.repeats)
        figures["vlm_image_prompt_only"] = rates("tiny qwen3-vl image prompt-only", t_image, r_image, args.samples)
        figures["vlm_image_prompt_only_no_cache"] = rates("tiny qwen3-vl image (no cache)", t_image_uncached,
                                                          r_image_uncached, args.samples)
        figures["vlm_prefix_cache_speedup"] = t_image_uncached / t_image
        figures["vlm_prefix_cache_max_abs_diff"] = float(np.abs(r_image.hidden_state
                                                                - r_image_uncached.hidden_state).max())
        [(t_image_gen, r_image_gen)] = timed([image_gen], [frames], args.repeats)
        figures["vlm_image_generation"] = rates(f"tiny qwen3-vl image generate {args.tokens}", t_image_gen,
                                                r_image_gen, args.samples)
        figures["vlm_image_tokens"] = int(r_image.num_tokens[0])
        figures["vlm_image_vs_text_time"] = t_image / t_text
        print(f"image input: {figures['vlm_image_tokens']} image tokens per frame, prompt {r_image.prompt_tokens[0]} "
              f"tokens ({image.prefix_tokens} cached); time {figures['vlm_image_vs_text_time']:.2f}x the text "
              f"model's (prompt-only); prefix cache {figures['vlm_prefix_cache_speedup']:.2f}x (max |diff| "
              f"{figures['vlm_prefix_cache_max_abs_diff']:.2e})")

    figures["prefix_cache_speedup"] = t_uncached / t_cached
    figures["prefix_cache_max_abs_diff"] = float(np.abs(r_cached.hidden_state - r_uncached.hidden_state).max())
    figures["prefix_cache_speedup_generation"] = tg_uncached / tg_cached
    figures["prefix_cache_generation_same_text"] = g_cached.generated_ids == g_uncached.generated_ids
    figures["prefix_cache_generation_max_abs_diff"] = float(
        np.abs(g_cached.hidden_state - g_uncached.hidden_state).max()
    )
    figures["prefix_cache_same_results"] = bool(
        figures["prefix_cache_max_abs_diff"] < 1e-4 and figures["prefix_cache_generation_same_text"]
        and figures["prefix_cache_generation_max_abs_diff"] < 1e-4
    )
    figures["ratio"] = figures["prefix_cache_speedup"]
    print(f"prefix cache speed-up: prompt-only {figures['prefix_cache_speedup']:.2f}x "
          f"(max |diff| {figures['prefix_cache_max_abs_diff']:.2e}), generation "
          f"{figures['prefix_cache_speedup_generation']:.2f}x (same text: "
          f"{figures['prefix_cache_generation_same_text']}, max |diff| "
          f"{figures['prefix_cache_generation_max_abs_diff']:.2e}); target >= 3x")
    record("bench_extract", figures, sort_keys=True)


if __name__ == "__main__":
    main()
