"""Hidden-state extraction with vLLM (`--backend vllm`; `pip install 'hsrl[vllm]'`). Text input only.

How it works:

- One vLLM engine per extractor, started with the `extract_hidden_states` speculative method: every request's
  residual-stream states at the engine's layers are cached next to its KV cache and, when the request finishes,
  written by a KV connector (`hsrl.llm.vllm_connector.HsrlHiddenStatesConnector`, loaded through
  `kv_connector_module_path`) to `<request id>.safetensors` in a folder private to this extractor
  (`tempfile.mkdtemp`), so two workers on one node never share files. Each expected file is read, checked (its
  token ids are the ones sent, shape, finite values) and removed with its lock file; a missing or unreadable file
  raises, never gives zeros.
- Token ids are those of the transformers backend (`hsrl.llm.tokens`: the same prompt template, prefix ids +
  observation ids, observation token range for 'mean' pooling), passed to vLLM as `prompt_token_ids`.
- Layers. vLLM's layer id k is the residual stream after k decoder layers, before the final norm (0 = the embedding
  output, L = the last block's output), which is HF's `hidden_states[k]` for k < L (checked against the installed
  vLLM source and by tests). HF's last entry L is the last block's output *after* the final norm: for layer L hsrl
  takes vLLM's id L and applies the model's own final norm (HF's module, weights read from the checkpoint) in float32.
  So a spec's layer means the same vector on both backends. The engine extracts the spec's layers (fixed when it
  starts); a call may ask for a subset of them.
- Prompt-only (tokens = 1): one request per sample with max_tokens=1; states of the prompt tokens pooled like the
  transformers backend ('last': last prompt token, 'mean': the observation's tokens).
- Generation (tokens = N > 1): vLLM generation on a second, plain engine of the same model (the extraction engine
  samples wrongly, see `VLLMExtractor.__init__`) with the spec's temperature and top-p, each sample seeded from
  spec.seed and its key (`hsrl.llm.tokens.sample_keys`: its seed or a hash of its text) and stopped at the model's
  end-of-sequence ids; then one prefill over prompt + generated ids on the extraction engine, pooled over the
  generated positions (end of sequence included), so the states are the generated tokens' own ones. vLLM's sampler
  is not the transformers backend's, so the two backends generate different texts from the same seed; greedy
  (temperature 0) agrees.
- Engine defaults for this use: in-process engine (`VLLM_ENABLE_V1_MULTIPROCESSING=0` unless set: no spawned engine
  process, so library callers, the server's model thread and Ray actors need no `__main__` guard), prefix caching
  on (the shared prompt prefix is computed once), eager mode on CPU (compiling takes minutes there), and on CPU
  `VLLM_CPU_KVCACHE_SPACE=1` (GiB) unless set, since vLLM's default fails its memory check on small machines.
  vLLM keeps one worker-side KV connector per process; each engine swaps its own in around its calls
  (`VLLMEngine._own_connector`), so an extraction and a sampling engine (or several extractors) share a process.
"""

import os
import shutil
import tempfile
import time
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from hsrl.llm.extractor import ExtractionResult, Extractor
from hsrl.llm.models import auto_device_dtype, resolve_model
from hsrl.llm.pooling import pool, resolve_layer
from hsrl.llm.prompt import prompt_program
from hsrl.llm.spec import ExtractionSpec
from hsrl.llm.tokens import encode_prompts, eos_ids, prefix_ids, resolve_template_name

CONNECTOR = "HsrlHiddenStatesConnector"
CONNECTOR_MODULE = "hsrl.llm.vllm_connector"
DEFAULT_MAX_MODEL_LEN = 32768  # tokens an engine holds unless max_model_len or $HSRL_VLLM_MAX_MODEL_LEN says
FOLDER_PREFIX = "hsrl-vllm-"  # + pid + random: an engine's private folder for hidden-state files


def remove_stale_folders(root: str | Path | None = None) -> list[Path]:
    """Remove this user's engine folders whose process is gone (killed workers leave theirs); returns them.

    An engine removes its folder when it closes or its process exits normally; a process killed by a signal (a
    Ray worker, a stopped server) cannot, and its folder may still hold files.
    """
    removed = []
    for folder in Path(root or tempfile.gettempdir()).glob(f"{FOLDER_PREFIX}*-*"):
        pid = folder.name[len(FOLDER_PREFIX):].split("-")[0]
        if not pid.isdigit() or not folder.is_dir() or folder.stat().st_uid != os.getuid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # alive (or another user's process with that pid): keep
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def read_hidden_states(path: str | Path, request: str, token_ids: Sequence[int], num_layers: int,
                       hidden_size: int) -> torch.Tensor:
    """Read one connector file, check it, remove it with its lock file; (T, num_layers, H) states of `token_ids`.

    Raises RuntimeError naming the request when the file is missing, unreadable, for other tokens, of another shape
    or not finite; the file and its lock are removed in every case.
    """
    from safetensors.torch import load_file

    path = Path(path)
    try:
        if not path.is_file():
            raise RuntimeError(f"vLLM request {request}: hidden-state file {path} is missing")
        try:
            data = load_file(str(path), device="cpu")
            states, ids = data["hidden_states"], data["token_ids"]
        except Exception as err:  # truncated or foreign file: safetensors raises several types
            raise RuntimeError(f"vLLM request {request}: cannot read hidden-state file {path}: {err}") from err
        if ids.tolist() != list(token_ids):
            raise RuntimeError(f"vLLM request {request}: {path} holds the states of other tokens "
                               f"({len(ids)} ids, expected {len(token_ids)})")
        expected = (len(token_ids), num_layers, hidden_size)
        if tuple(states.shape) != expected:
            raise RuntimeError(f"vLLM request {request}: {path} has states of shape {tuple(states.shape)}, "
                               f"expected {expected}")
        if not bool(torch.isfinite(states).all()):
            raise RuntimeError(f"vLLM request {request}: {path} holds non-finite hidden states")
        return states
    finally:
        for leftover in (path, Path(f"{path}.lock")):
            leftover.unlink(missing_ok=True)


def _final_norm(path: str, config) -> torch.nn.Module:
    """The model's final norm as transformers builds it (e.g. Qwen3's RMSNorm), weights from the checkpoint, float32.

    Built from the model class on the meta device, so HF's own formula applies (Gemma's (1 + w) included) and only the
    norm's weights are read.
    """
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    base = model.base_model
    names = [n for n, _ in base.named_children() if n in ("norm", "final_layernorm", "final_layer_norm", "ln_f")]
    if len(names) != 1:
        raise ValueError(f"{path}: cannot find the final norm of {type(base).__name__} (children: "
                         f"{[n for n, _ in base.named_children()]})")
    norm = getattr(base, names[0])
    prefix = f"{model.base_model_prefix}.{names[0]}." if model.base_model_prefix else f"{names[0]}."
    wanted = {prefix + k: k for k, _ in norm.named_parameters()} | {prefix + k: k for k, _ in norm.named_buffers()}
    found = {}
    for file in _checkpoint_files(path):
        with safe_open(str(file), "pt", device="cpu") as f:
            for key in set(wanted) & set(f.keys()):
                found[wanted[key]] = f.get_tensor(key).float()
    missing = sorted(set(wanted.values()) - set(found))
    if missing:
        raise ValueError(f"{path}: the checkpoint has no {', '.join(prefix + m for m in missing)} (final norm)")
    norm = norm.to_empty(device="cpu").float()
    norm.load_state_dict(found, strict=False)
    return norm.eval()


def _checkpoint_files(path: str) -> list[Path]:
    """The .safetensors files of a local folder or of a Hub model (from the local cache vLLM filled)."""
    if Path(path).is_dir():
        files = sorted(Path(path).glob("*.safetensors"))
    else:
        from huggingface_hub import snapshot_download

        files = sorted(Path(snapshot_download(path, allow_patterns=["*.safetensors"])).glob("*.safetensors"))
    if not files:
        raise ValueError(f"{path}: no .safetensors weights to read the final norm from")
    return files


class VLLMEngine:
    """A vLLM engine of one model: with `layers`, an extraction engine that writes the hidden states of those layers
    (vLLM ids = HF indices 0..L) into a private folder; without, a plain engine for sampling.

    Extractors of one model may share engines (`VLLMExtractor(spec, engine=..., generation_engine=...)`) when their
    layers are among the engine's; the pooling, mode and sampling settings are the extractor's.
    """

    def __init__(self, path: str, dtype: str, layers: Sequence[int] | None, max_model_len: int, *, seed: int = 0,
                 enforce_eager: bool | None = None, engine_kwargs: dict | None = None):
        self.path, self.dtype = path, dtype
        self.layers = None if layers is None else tuple(sorted(set(int(x) for x in layers)))
        self.max_model_len = int(max_model_len)
        self.device = _platform_device()
        self.storage = None
        if self.device == "cpu":
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        kwargs = dict(
            model=path, tokenizer=path, dtype=dtype, seed=seed, max_model_len=self.max_model_len,
            enforce_eager=(self.device == "cpu") if enforce_eager is None else bool(enforce_eager),
            enable_prefix_caching=True,
        )
        if self.layers is not None:
            remove_stale_folders()
            # private (mode 0700, one per engine, named by pid): never shared with another process
            self.storage = tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{os.getpid()}-")
            kwargs["speculative_config"] = {
                "method": "extract_hidden_states", "num_speculative_tokens": 1,
                "draft_model_config": {"hf_config": {"eagle_aux_hidden_state_layer_ids": list(self.layers)}},
            }
            kwargs["kv_transfer_config"] = {
                "kv_connector": CONNECTOR, "kv_connector_module_path": CONNECTOR_MODULE, "kv_role": "kv_producer",
                "kv_connector_extra_config": {"shared_storage_path": self.storage},
            }
        elif self.device == "cpu":
            # Seeded requests whose prefill is split over steps crash vLLM's CPU sampler ("CPU Generator does not
            # use offset"): schedule whole prompts.
            kwargs.update(enable_chunked_prefill=False, max_num_batched_tokens=self.max_model_len)
        kwargs.update(engine_kwargs or {})
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.storage, True) if self.storage else None
        self._connector = None  # this engine's worker-side KV connector (extraction engines), see _own_connector
        with self._own_connector():
            self.llm = LLM(**kwargs)

    @contextmanager
    def _own_connector(self):
        """Make this engine's KV connector vLLM's process-wide one while it runs.

        vLLM keeps the worker-side connector in one global per process, made by the first engine that has one, so
        in-process engines would share it: a plain engine would call a connector it has no metadata for, and a second
        extraction engine would write into the first one's folder. Each engine swaps its own in around its calls.
        """
        from vllm.distributed.kv_transfer import kv_transfer_state

        saved = kv_transfer_state._KV_CONNECTOR_AGENT
        kv_transfer_state._KV_CONNECTOR_AGENT = self._connector
        try:
            yield
        finally:
            self._connector = kv_transfer_state._KV_CONNECTOR_AGENT
            kv_transfer_state._KV_CONNECTOR_AGENT = saved

    def close(self) -> None:
        """Shut the engine down and remove its file folder."""
        llm, self.llm = self.llm, None
        if llm is not None:
            with self._own_connector():
                llm.llm_engine.engine_core.shutdown()
        if self._cleanup is not None:
            self._cleanup()

    def reset_prefix_cache(self) -> None:
        """Forget cached prompt blocks (benchmarks: vLLM would otherwise reuse whole prompts it has seen)."""
        with self._own_connector():
            if not self.llm.reset_prefix_cache():
                raise RuntimeError("vLLM could not reset its prefix cache (requests still running?)")

    def run(self, rows: list[list[int]], params: list):
        """One engine call; returns the request outputs in input order and each request's hidden-state file path."""
        from vllm.inputs import TokensPrompt

        if self.llm is None:
            raise RuntimeError("this vLLM engine was closed")
        with self._own_connector():
            outputs = self.llm.generate([TokensPrompt(prompt_token_ids=r) for r in rows], params, use_tqdm=False)
            if self.storage is None:
                return outputs, []
            paths = []
            for out in outputs:
                transfer = out.kv_transfer_params or {}
                if "hidden_states_path" not in transfer:
                    raise RuntimeError(f"vLLM request {out.request_id} returned no hidden-state file (is the "
                                       f"{CONNECTOR} KV connector configured?)")
                paths.append(transfer["hidden_states_path"])
            self._wait_for_files(paths, [o.request_id for o in outputs])
        return outputs, paths

    def _wait_for_files(self, paths: list[str], requests: list[str], timeout: float = 600.0) -> None:
        """Let the engine write the files of finished requests.

        The connector writes a request's file at the engine step after the request finished; `generate` returns
        before that step. In-process, step the engine until it holds no request; with an engine process, wait.
        """
        core = getattr(self.llm.llm_engine.engine_core, "engine_core", None)  # set for the in-process client only
        deadline = time.monotonic() + timeout
        while True:
            missing = [r for r, p in zip(requests, paths) if not os.path.exists(p)]
            if not missing:
                return
            if core is not None and not core.scheduler.has_requests():
                break  # nothing left that could write them
            if time.monotonic() > deadline:
                break
            if core is not None:
                self.llm.llm_engine.step()
            else:
                time.sleep(0.002)
        raise RuntimeError(f"vLLM requests {missing[:5]}{' ...' if len(missing) > 5 else ''}: no hidden-state file "
                           f"was written under {self.storage}")


class VLLMExtractor(Extractor):
    """Extractor on a vLLM engine (see the module docstring). Same interface and spec as `TransformersExtractor`.

    spec: what to extract (spec.backend 'vllm', input 'text'); `self.spec` is it resolved.
    device: None (vLLM's platform), 'cpu' or 'cuda' as the installed vLLM build runs; choose the GPU with
        CUDA_VISIBLE_DEVICES (Ray does it per worker).
    batch_size: samples per engine call (vLLM schedules inside a call; this bounds the files and memory per call).
    max_model_len: longest prompt + generation the engine holds (default: $HSRL_VLLM_MAX_MODEL_LEN, else
        spec.max_prompt_length + tokens when set, else 32768; never more than the model's context). Longer prompts
        are refused with an error.
    enforce_eager: None = eager on CPU (compilation takes minutes there), compiled on GPUs.
    engine_kwargs: more arguments for `vllm.LLM` (e.g. gpu_memory_utilization).
    engine: a running extraction `VLLMEngine` of the spec's model to share (its layers must include the spec's).
    generation_engine: a running plain `VLLMEngine` of the spec's model to share (generation mode).
    Engines not given are started with max_model_len, enforce_eager and engine_kwargs. In generation mode on a GPU
    each of the two engines takes gpu_memory_utilization 0.45 unless engine_kwargs says otherwise.
    """

    def __init__(
        self,
        spec: ExtractionSpec,
        *,
        device: str | None = None,
        batch_size: int = 64,
        max_model_len: int | None = None,
        enforce_eager: bool | None = None,
        engine_kwargs: dict | None = None,
        engine: VLLMEngine | None = None,
        generation_engine: VLLMEngine | None = None,
    ):
        if spec.backend != "vllm":
            raise ValueError(f"VLLMExtractor runs spec.backend='vllm', not {spec.backend!r} (use make_extractor)")
        if spec.reads_images:
            raise ValueError(f"the vLLM backend reads text only; spec.input={spec.input!r} needs the transformers "
                             f"backend (--backend transformers)")
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig

        path = resolve_model(spec.model)
        local = Path(path).is_dir()
        config = AutoConfig.from_pretrained(path, local_files_only=local)
        if not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in (config.architectures or ())):
            raise ValueError(f"{spec.model} is not a causal LM ({', '.join(config.architectures or ['no LM head'])}): "
                             f"the vLLM backend extracts from decoder models; use --backend transformers")
        text_config = config.get_text_config()
        self.hidden_size = int(text_config.hidden_size)
        self.num_layers = int(text_config.num_hidden_layers)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local)
        try:
            generation_config = GenerationConfig.from_pretrained(path, local_files_only=local)
        except OSError:  # no generation_config.json: the tokenizer's end-of-sequence id alone
            generation_config = None
        self._eos_ids = eos_ids(generation_config, self.tokenizer)

        platform_device = _platform_device()
        if device is not None and device.split(":")[0] != platform_device:
            raise ValueError(f"device={device!r}, but the installed vLLM runs on {platform_device}")
        if device is not None and device.startswith("cuda:") and device != "cuda:0":
            raise ValueError(f"device={device!r}: vLLM uses the first visible GPU; choose it with "
                             f"CUDA_VISIBLE_DEVICES instead")
        _, dtype = auto_device_dtype(spec.dtype, platform_device)
        template, version = resolve_template_name(spec, "chat")
        self.spec = spec.replace(template=template, template_version=version, dtype=dtype)
        self.template = prompt_program(self.spec).template(self.tokenizer)
        self._prefix_ids = prefix_ids(self.tokenizer, self.template, True)
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size={batch_size}; expected >= 1")

        # vLLM ids equal HF indices; HF's L (normed) is vLLM's L plus the final norm
        layers = {resolve_layer(layer, self.num_layers) for layer in self.spec.layers}
        context = getattr(text_config, "max_position_embeddings", None)
        tokenizer_max = getattr(self.tokenizer, "model_max_length", None)
        if context is None or (tokenizer_max is not None and tokenizer_max < context):
            context = tokenizer_max
        if max_model_len is None and os.environ.get("HSRL_VLLM_MAX_MODEL_LEN"):
            max_model_len = int(os.environ["HSRL_VLLM_MAX_MODEL_LEN"])
        if max_model_len is None:
            # vLLM reserves KV cache for one whole max_model_len sequence at start-up; a long-context model's full
            # context (Qwen3-4B-2507: 262144) would not fit beside a second engine. Game prompts are ~2k tokens.
            limit = spec.max_prompt_length
            max_model_len = min(context, limit + spec.tokens if limit is not None else DEFAULT_MAX_MODEL_LEN)
        engine_kwargs = dict(engine_kwargs or {})
        if spec.generates and platform_device != "cpu":
            engine_kwargs.setdefault("gpu_memory_utilization", 0.45)  # two engines share the GPU
        for given, what in ((engine, "extraction"), (generation_engine, "generation")):
            if given is not None and (given.path != path or given.dtype != dtype):
                raise ValueError(f"the {what} engine given runs {given.path} in {given.dtype}; the spec asks for "
                                 f"{path} in {dtype}")
            if given is not None and (given.layers is None) != (what == "generation"):
                raise ValueError(f"the {what} engine given is {'a plain' if given.layers is None else 'an extraction'}"
                                 f" engine")
        if engine is None:
            engine = VLLMEngine(path, dtype, sorted(layers), max_model_len, seed=spec.seed,
                                enforce_eager=enforce_eager, engine_kwargs=engine_kwargs)
        elif not layers <= set(engine.layers):
            raise ValueError(f"the engine given extracts layers {list(engine.layers)}; the spec asks for "
                             f"{sorted(layers)}")
        # Generation runs on a plain engine: with the extract_hidden_states method vLLM feeds each sampled token
        # back as a draft token, and sampling (temperature > 0) then repeats tokens and ignores the request seeds
        # (measured with vllm-cpu 0.32.0); the extraction engine gets the prefill over prompt + generated ids.
        if spec.generates and generation_engine is None:
            generation_engine = VLLMEngine(path, dtype, None, max_model_len, seed=spec.seed,
                                           enforce_eager=enforce_eager, engine_kwargs=engine_kwargs)
        self.engine = engine
        self.generation_engine = generation_engine
        self.engine_layers = engine.layers
        self.context_length = min(engine.max_model_len,
                                  generation_engine.max_model_len if generation_engine else engine.max_model_len)
        self._final_norm = _final_norm(path, config) if self.num_layers in self.engine_layers else None

    def close(self) -> None:
        """Shut the engines down (also for the extractors that share them) and remove the file folder."""
        self.engine.close()
        if self.generation_engine is not None:
            self.generation_engine.close()

    # ---- tokenization (shared with the transformers backend) ---------------------------------------------------

    @property
    def prefix_tokens(self) -> int:
        return len(self._prefix_ids)

    def encode(self, observations: Sequence[str]) -> tuple[list[list[int]], np.ndarray]:
        """Prompt token ids per sample and the (B, 2) [start, end) token range of each observation in them."""
        return encode_prompts(self.tokenizer, self.template, self._prefix_ids, True, observations)

    def _encode(self, texts, images):
        return self.encode(texts)

    def _request_seeds(self, keys: list[int]) -> list[int]:
        """vLLM's per-request seed: spec.seed mixed with the sample's key, as the transformers backend mixes them."""
        return [int(np.random.default_rng([self.spec.seed % 2**64, k]).integers(2**63)) for k in keys]

    # ---- engine calls -------------------------------------------------------------------------------------------

    def _prefill_states(self, rows: list[list[int]], ranges: np.ndarray, layers: set[int], want_tokens: bool):
        """Prefill rows (max_tokens=1) and pool each row's token range; ({layer: (B, H)}, {layer: [(T_b, H)]})."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, detokenize=False)
        outputs, paths = self.engine.run(rows, [params] * len(rows))
        column = {layer: self.engine_layers.index(layer) for layer in layers}
        picked = {layer: [] for layer in layers}
        failure = None
        for b, (out, path) in enumerate(zip(outputs, paths)):
            try:
                states = read_hidden_states(path, out.request_id, rows[b], len(self.engine_layers), self.hidden_size)
            except RuntimeError as err:  # keep reading, so that every file is removed; raise the first error
                failure = failure or err
                continue
            lo, hi = int(ranges[b, 0]), int(ranges[b, 1])
            for layer in layers:
                picked[layer].append(states[lo:hi, column[layer]].float())
        if failure is not None:
            raise failure
        counts = torch.as_tensor(ranges[:, 1] - ranges[:, 0])
        hidden, tokens = {}, {}
        for layer in layers:
            padded = torch.nn.utils.rnn.pad_sequence(picked[layer], batch_first=True)
            if layer == self.num_layers:  # HF's last entry is normalised; vLLM's is not
                with torch.inference_mode():
                    padded = self._final_norm(padded)
            mask = torch.arange(padded.shape[1])[None] < counts[:, None]
            hidden[layer] = pool(padded, mask, self.spec.pooling)
            if want_tokens:
                tokens[layer] = padded
        return hidden, tokens

    def _sample(self, rows: list[list[int]], seeds: list[int]) -> list[list[int]]:
        """Sample up to spec.tokens ids per row (end-of-sequence included when generated)."""
        from vllm import SamplingParams

        spec = self.spec
        params = [SamplingParams(max_tokens=spec.tokens, temperature=spec.temperature, top_p=spec.top_p, seed=s,
                                 stop_token_ids=self._eos_ids, detokenize=False) for s in seeds]
        outputs, _ = self.generation_engine.run(rows, params)
        return [list(out.outputs[0].token_ids) for out in outputs]

    # ---- public -------------------------------------------------------------------------------------------------

    def _layers(self, layers) -> tuple[tuple[int, ...], dict[int, int]]:
        asked, absolute = super()._layers(layers)
        other = sorted(set(absolute.values()) - set(self.engine_layers))
        if other:
            raise ValueError(f"layers {other}: this vLLM engine extracts layers {list(self.engine_layers)} (fixed when "
                             f"it starts); make an extractor whose spec.layer includes them")
        return asked, absolute

    def _run(self, rows, ranges, prompt_lengths, layers, want_tokens, generated=None) -> ExtractionResult:
        asked, absolute = self._layers(layers)
        wanted = set(absolute.values())
        n = len(rows)
        hidden = {a: np.empty((n, self.hidden_size), dtype=np.float32) for a in wanted}
        num_tokens = (ranges[:, 1] - ranges[:, 0]).astype(np.int64)
        token_states = None
        if want_tokens:
            shape = (n, int(num_tokens.max()), self.hidden_size)
            token_states = {a: np.zeros(shape, dtype=np.float16) for a in wanted}
        for start in range(0, n, self.batch_size):
            idx = np.arange(start, min(n, start + self.batch_size))
            h, t = self._prefill_states([rows[i] for i in idx], ranges[idx], wanted, want_tokens)
            for a in wanted:
                values = h[a].numpy()
                bad = ~np.isfinite(values).all(axis=1)
                if bad.any():
                    raise RuntimeError(f"non-finite hidden states for samples {idx[bad].tolist()} at layer {a}")
                hidden[a][idx] = values
                if want_tokens:
                    for k, i in enumerate(idx):
                        token_states[a][i, : num_tokens[i]] = t[a][k, : num_tokens[i]].to(torch.float16).numpy()
        generated = generated if generated is not None else [[] for _ in range(n)]
        return ExtractionResult(
            hidden={layer: hidden[absolute[layer]] for layer in asked},
            generated_text=[self._decode(g) if g else "" for g in generated],
            generated_ids=[list(g) for g in generated],
            num_tokens=num_tokens,
            prompt_tokens=np.asarray(prompt_lengths, dtype=np.int64),
            finished=np.array([bool(g) and g[-1] in self._eos_ids for g in generated], dtype=bool),
            token_states=None if token_states is None else {layer: token_states[absolute[layer]] for layer in asked},
        )

    def _run_prefill(self, rows, ranges, prompt_lengths, layers, want_tokens: bool) -> ExtractionResult:
        return self._run(rows, ranges, prompt_lengths, layers, want_tokens)

    def _run_generation(self, rows, prompt_lengths, layers, want_tokens: bool, keys: list[int]) -> ExtractionResult:
        """Sample on the generation engine, then one prefill over prompt + generated ids on the extraction engine."""
        seeds = self._request_seeds(keys)
        generated = []
        for start in range(0, len(rows), self.batch_size):
            generated += self._sample(rows[start : start + self.batch_size], seeds[start : start + self.batch_size])
        full = [r + g for r, g in zip(rows, generated)]
        ranges = np.array([[len(r), len(f)] for r, f in zip(rows, full)], dtype=np.int64)
        return self._run(full, ranges, prompt_lengths, layers, want_tokens, generated)


def _platform_device() -> str:
    """'cpu' or 'cuda', as the installed vLLM build runs."""
    from vllm.platforms import current_platform

    return "cpu" if current_platform.is_cpu() else current_platform.device_type
