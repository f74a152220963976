"""`ExtractionSpec`: everything that changes a hidden state, in one frozen, serialisable object.

Its JSON (sorted keys) and a short hash are written into every labelled file, every checkpoint and the server's
`/health`; a consumer whose spec differs from its producer's refuses to run. `spec_differences` is the one comparison
of two specs (data files, checkpoints, statistics and the server all call it) and `check_spec` the one refusal.

Layer numbering follows HuggingFace's `output_hidden_states` tuple of a model with L blocks (L + 1 entries):
0 is the embedding output (the input of block 1), i (1 <= i < L) is the output of block i (residual stream,
un-normalised), and L is the last block's output *after* the model's final norm (for models without a final norm,
such as BERT, simply the last block's output). Negative indices count from the end: -1 == L.
vLLM's layer id k (`eagle_aux_hidden_state_layer_ids` of its `extract_hidden_states` method) is the residual stream
after k decoder layers, before the final norm: k = 0 is the embedding output and k < L equals HF index k. vLLM's id
L is the last block's output *before* the final norm, which the HF tuple does not contain; the vLLM backend
(`hsrl.llm.vllm_backend`) applies the model's final norm to it, so layer L (-1) means the same vector on both
backends (checked in tests/test_llm_vllm.py).

Fields that are "auto" (template, dtype) are resolved by the backend when it loads the model; the spec a backend
reports (`Extractor.spec`) is the resolved one, and that is what gets written into files.
"""

import dataclasses
import hashlib
import json
import warnings
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from hsrl.errors import InputError
from hsrl.strict import dataclass_kwargs

POOLINGS = ("mean", "last")
TEMPLATES = ("auto", "chat", "short", "forecast", "hindsight", "custom")  # forecast, hindsight: shipped placeholder
# templates (hindsight shows the next steps of the data: offline labels only); custom: a file
DTYPES = ("auto", "float32", "bfloat16", "float16")
INPUTS = ("text", "image", "image+text")  # what the model reads: the text rendering, the image, or both
BACKENDS = ("transformers", "vllm")
VARIANTS = ("classic", "craftax")
TEXT_SOURCES = ("hsrl", "import")  # the text the model reads: hsrl.text's rendering, or the text_obs `hsrl import` kept
SAMPLING_FIELDS = ("temperature", "top_p", "seed")  # change hidden states only when the spec generates (tokens > 1)
# Fields added after specs were first written: left out of the JSON at these defaults, so a spec that does not use
# them has the JSON and hash it had before they existed (and old files, checkpoints and servers still match).
LATER_DEFAULTS = {"history": 0, "template_text": None, "template_hash": None, "text_source": "hsrl", "future": 0}
LIVE_TEXT_WHY = ("its states were computed from the text_obs another tool wrote (`hsrl label --text-from import`), "
                 "which exists only in the imported files; online runs, the server and evaluation render observations "
                 "with hsrl.text, so they cannot compute such states: label the data with hsrl.text's rendering "
                 "(--text-from hsrl, the default) to use its states live")
HINDSIGHT_WHY = ("its prompts show the next steps of the recorded data (hindsight labels, `hsrl label --future K`), "
                 "and the future is not known while playing, so online runs, the server and evaluation cannot compute "
                 "such states: evaluate offline on hindsight-labelled data, or evaluate with another spec's states as "
                 "a cross-source evaluation (`hsrl eval RUN --states-from SPEC --cross-source`)")


def current_renderer_version() -> str:
    """The text renderer's version (`hsrl.text.RENDERER_VERSION`), the default of `ExtractionSpec.renderer_version`."""
    from hsrl.text import RENDERER_VERSION

    return str(RENDERER_VERSION)


def spec_hash(spec_json: str) -> str:
    """The short hash of a spec's JSON, as written in files, checkpoints and /health: first 12 hex of SHA-256."""
    return hashlib.sha256(spec_json.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ExtractionSpec:
    """What produces a hidden state. Two equal specs give the same hidden states (within float tolerance).

    tokens = 1 is prompt-only mode (one forward pass; pooling 'last' = the last prompt token, 'mean' = mean over the
    observation's tokens); tokens = N > 1 generates up to N tokens and pools the generated tokens' own states
    ('mean' over the tokens actually generated, end-of-sequence included; 'last' = the last generated token).
    Sampling (temperature, top_p, seed) matters only when tokens > 1; temperature 0 is greedy.
    What the model is asked (`hsrl.llm.prompt.PromptProgram`): the template, for placeholder templates ('forecast',
    'hindsight', 'custom') with its text and hash, `history`, how many previous observations of the episode each prompt
    shows, and `future`, how many next ones (hindsight labels: known only in recorded data, so offline only).
    """

    model: str = "minilm"  # registry name (hsrl.llm.models.MODEL_ALIASES), HuggingFace id or local path
    layer: int | tuple[int, ...] = -1  # HF hidden_states index (see module docstring); several -> one vector each
    tokens: int = 1
    pooling: str = "mean"
    template: str = "auto"  # 'chat' (system + rules + few-shot + observation), 'short', 'auto' (by model kind),
    # 'forecast' (shipped placeholder template: predict the next steps), 'hindsight' (shipped: summarise the next
    # `future` steps of the data), 'custom' (a user's template_text)
    template_version: int | None = None  # None: the current version of `template` (hsrl.llm.prompt.TEMPLATE_VERSIONS)
    template_text: str | None = None  # placeholder templates ('forecast', 'hindsight', 'custom'): the text
    template_hash: str | None = None  # first 12 hex of the SHA-256 of template_text (derived; checked when given)
    history: int = 0  # previous observations of the episode each prompt shows (with the actions between them)
    variant: str = "classic"  # game variant the prompt describes: 'classic' or 'craftax'
    renderer_version: str = field(default_factory=current_renderer_version)
    temperature: float = 0.6
    top_p: float = 0.95
    seed: int = 0
    dtype: str = "auto"  # 'auto': bfloat16 on CUDA, float32 on CPU
    max_prompt_length: int | None = None  # None: the model's context length
    input: str = "text"  # 'text' (hsrl.text rendering), 'image' (pixel observation, VLMs), 'image+text' (both)
    backend: str = "transformers"  # 'transformers' or 'vllm'
    text_source: str = "hsrl"  # 'hsrl' (hsrl.text renders the observation) or 'import' (the text_obs another tool
    # wrote, kept by `hsrl import`; exists only in the files: `check_live_text`)
    future: int = 0  # next observations of the episode in the data each prompt shows ({future}; hindsight labels,
    # offline only: `check_live_text`)

    def __post_init__(self):
        layer = self.layer
        if isinstance(layer, (list, tuple)):
            layer = tuple(int(x) for x in layer)
            if not layer:
                raise ValueError("layer: give at least one layer index")
        else:
            layer = int(layer)
        object.__setattr__(self, "layer", layer)
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "top_p", float(self.top_p))
        object.__setattr__(self, "renderer_version", str(self.renderer_version))
        if self.template_version is None and self.template != "auto":
            from hsrl.llm.prompt import TEMPLATE_VERSIONS

            object.__setattr__(self, "template_version", TEMPLATE_VERSIONS.get(self.template))
        for name, allowed in (
            ("pooling", POOLINGS), ("template", TEMPLATES), ("dtype", DTYPES), ("input", INPUTS),
            ("backend", BACKENDS), ("variant", VARIANTS), ("text_source", TEXT_SOURCES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}; expected one of {', '.join(allowed)}")
        if not isinstance(self.tokens, int) or self.tokens < 1:
            raise ValueError(f"tokens={self.tokens!r}; expected an int >= 1 (1 = prompt-only)")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature}; expected >= 0 (0 = greedy)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p}; expected 0 < top_p <= 1")
        if self.text_source != "hsrl" and not self.reads_text:
            raise ValueError(f"text_source={self.text_source!r}; input {self.input!r} reads no text")
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            raise ValueError(f"max_prompt_length={self.max_prompt_length}; expected >= 1 or None")
        self._check_prompt()

    def _check_prompt(self) -> None:
        """The prompt program's fields: history, future, and a placeholder template's text (its placeholders) and
        hash."""
        from hsrl.llm.prompt import (
            FUTURE_LIMIT, HISTORY_LIMIT, PLACEHOLDER_TEMPLATES, SHIPPED_TEMPLATES, parse_template, shipped_template,
            template_hash,
        )

        if not isinstance(self.history, int) or isinstance(self.history, bool) or not 0 <= self.history <= HISTORY_LIMIT:
            raise ValueError(f"history={self.history!r}; expected an int in 0..{HISTORY_LIMIT}")
        if not isinstance(self.future, int) or isinstance(self.future, bool) or not 0 <= self.future <= FUTURE_LIMIT:
            raise ValueError(f"future={self.future!r}; expected an int in 0..{FUTURE_LIMIT}")
        if (self.history or self.future or self.template in PLACEHOLDER_TEMPLATES) and self.input != "text":
            raise ValueError(f"input={self.input!r}; history, future and placeholder templates read text observations "
                             f"only (input 'text')")
        if self.template == "hindsight" and not self.future:
            raise ValueError("future=0; template 'hindsight' shows the next K steps of the recorded data: give "
                             "future K >= 1 (`hsrl label --template hindsight --future K`)")
        if self.future and self.template not in PLACEHOLDER_TEMPLATES:
            raise ValueError(f"future={self.future}; the next steps go into a placeholder template with {{future}} "
                             f"('hindsight', or --prompt-template FILE), not template {self.template!r}")
        if self.template in SHIPPED_TEMPLATES and self.template_text is None:
            object.__setattr__(self, "template_text", shipped_template(self.template))
        if self.template not in PLACEHOLDER_TEMPLATES:
            if self.template_text is not None or self.template_hash is not None:
                raise ValueError(f"template_text={self.template_text!r:.40}; only placeholder templates "
                                 f"({', '.join(PLACEHOLDER_TEMPLATES)}) have a text")
            return
        if not isinstance(self.template_text, str) or not self.template_text.strip():
            raise ValueError(f"template_text={self.template_text!r:.40}; template {self.template!r} needs its text")
        parse_template(self.template_text, self.history, self.future)  # TemplateError (a ValueError), one line
        digest = template_hash(self.template_text)
        if self.template_hash is not None and self.template_hash != digest:
            raise ValueError(f"template_hash={self.template_hash!r}; the template's text hashes to {digest!r}")
        object.__setattr__(self, "template_hash", digest)

    @property
    def layers(self) -> tuple[int, ...]:
        """The layer field as a tuple."""
        return self.layer if isinstance(self.layer, tuple) else (self.layer,)

    @property
    def generates(self) -> bool:
        return self.tokens > 1

    @property
    def reads_images(self) -> bool:
        """True when the model reads the image observation (input 'image' or 'image+text')."""
        return self.input != "text"

    @property
    def hindsight(self) -> bool:
        """True when the prompts show the next steps of the recorded data (`future` > 0): states only labelling can
        compute (`check_live_text`)."""
        return self.future > 0

    @property
    def reads_text(self) -> bool:
        """True when the model reads the text observation (input 'text' or 'image+text')."""
        return self.input != "image"

    def replace(self, **changes) -> "ExtractionSpec":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """The fields as a dict; those of `LATER_DEFAULTS` only when set (so older specs keep their JSON and hash)."""
        d = dataclasses.asdict(self)
        if isinstance(d["layer"], tuple):
            d["layer"] = list(d["layer"])
        return {k: v for k, v in d.items() if not (k in LATER_DEFAULTS and v == LATER_DEFAULTS[k])}

    def to_json(self, indent: int | None = None) -> str:
        """Canonical JSON: sorted keys; with indent=None also no spaces, the form the hash is computed on."""
        separators = (",", ":") if indent is None else (",", ": ")
        return json.dumps(self.to_dict(), sort_keys=True, indent=indent, separators=separators)

    @classmethod
    def from_dict(cls, d: Mapping) -> "ExtractionSpec":
        return cls(**dataclass_kwargs(cls, d))

    @classmethod
    def from_json(cls, text: str) -> "ExtractionSpec":
        return cls.from_dict(json.loads(text))

    @property
    def hash(self) -> str:
        """First 12 hex digits of the SHA-256 of the canonical JSON (`spec_hash(self.to_json())`)."""
        return spec_hash(self.to_json())


SpecLike = ExtractionSpec | str | Mapping | None


def _spec_dict(spec: SpecLike) -> dict | None:
    if spec is None or isinstance(spec, dict):
        return spec
    if isinstance(spec, ExtractionSpec):
        return spec.to_dict()
    if isinstance(spec, str):
        d = json.loads(spec)
        if not isinstance(d, dict):
            raise ValueError(f"an extraction spec's JSON must be an object, got {spec[:80]!r}")
        return d
    if isinstance(spec, Mapping):
        return dict(spec)
    raise TypeError(f"expected an ExtractionSpec, its JSON or dict, or None; got {type(spec).__name__}")


def spec_differences(a: SpecLike, b: SpecLike, ignore: Collection[str] = ()) -> list[str]:
    """Names of the fields in which two extraction specs differ (sorted); [] when they give the same hidden states.

    a, b: an ExtractionSpec, its JSON or dict, or None (unlabelled data: no spec; None vs a spec differs in
    '<labelled vs unlabelled>'). A field present in one only differs. The sampling fields (`SAMPLING_FIELDS`) are
    ignored when both specs are prompt-only (tokens == 1): nothing is sampled, so they change nothing. `ignore`
    leaves further fields out (e.g. those a backend resolves).
    """
    da, db = _spec_dict(a), _spec_dict(b)
    if da is None or db is None:
        return [] if da is db else ["<labelled vs unlabelled>"]
    skip = set(ignore)
    if da.get("tokens") == 1 and db.get("tokens") == 1:
        skip.update(SAMPLING_FIELDS)
    absent = object()
    return sorted(k for k in set(da) | set(db) if k not in skip and da.get(k, absent) != db.get(k, absent))


def text_source(spec: SpecLike) -> str:
    """Which text a spec's model read: 'hsrl' (hsrl.text's rendering: also a spec written before the field, or no
    spec) or 'import' (imported files' own text_obs)."""
    d = _spec_dict(spec)
    return "hsrl" if d is None else d.get("text_source", "hsrl")


def future_steps(spec: SpecLike) -> int:
    """How many next steps of the recorded data a spec's prompts show (`future`; 0: also a spec written before the
    field, or no spec). > 0: hindsight labels, which only labelling can compute."""
    d = _spec_dict(spec)
    return 0 if d is None else int(d.get("future", 0))


def check_live_text(spec: SpecLike, where: str) -> None:
    """Refuse (InputError, one line) a spec whose states cannot be computed live from observations rendered by
    hsrl.text (online, serve, eval): its text came from imported files (`text_source` 'import'), or its prompts
    show the next steps of the recorded data (`future` > 0, hindsight labels: the future is not known while
    playing). `where` names what carries the spec."""
    source = text_source(spec)
    if source != "hsrl":
        raise InputError(f"{where}: extraction spec with text_source {source!r}: {LIVE_TEXT_WHY}")
    future = future_steps(spec)
    if future:
        raise InputError(f"{where}: extraction spec with future {future} (hindsight): {HINDSIGHT_WHY}")


def _shown(value, limit: int = 60) -> str:
    """A field's value in a message: its repr, cut to `limit` characters (a template's text is long)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def difference_detail(a: SpecLike, b: SpecLike, fields: Collection[str] | None = None) -> str:
    """The fields in which two specs differ with both values, `name: a != b` joined by '; ' (values cut to 60
    characters; '<absent>' where a spec lacks the field); `fields` default: `spec_differences(a, b)`."""
    fields = spec_differences(a, b) if fields is None else fields
    da, db = _spec_dict(a) or {}, _spec_dict(b) or {}
    return "; ".join(f"{n}: {_shown(da.get(n, '<absent>'))} != {_shown(db.get(n, '<absent>'))}" for n in fields)


def spec_summary(spec: SpecLike) -> str:
    """One line naming what made a spec's states: its hash, model, layer, tokens, pooling, template (with its text's
    hash), history, future and text source (the last three when set); 'no extraction spec' for None."""
    d = _spec_dict(spec)
    if d is None:
        return "no extraction spec"
    digest = spec_hash(json.dumps(d, sort_keys=True, separators=(",", ":")))
    template = f"{d.get('template')}" + (f" {d['template_hash']}" if d.get("template_hash") else "")
    parts = [f"spec {digest}: model {d.get('model')}", f"layer {d.get('layer')}", f"tokens {d.get('tokens')}",
             f"pooling {d.get('pooling')}", f"template {template}"]
    parts += [f"{k.replace('_', ' ')} {d[k]}" for k in ("history", "future", "text_source")
              if k in d and d[k] != LATER_DEFAULTS[k]]
    return ", ".join(parts)


def check_spec(producer: SpecLike, consumer: SpecLike, allow: bool = False, what: str = "extraction spec mismatch"
               ) -> list[str]:
    """Raise ValueError naming the fields (and values) in which the specs differ (`spec_differences`); with
    allow=True only warn. Returns the differing field names (empty when compatible). `what` starts the message.
    """
    fields = spec_differences(producer, consumer)
    if fields:
        da, db = _spec_dict(producer) or {}, _spec_dict(consumer) or {}
        detail = difference_detail(da, db, fields)
        hashes = (f"producer {spec_hash(json.dumps(da, sort_keys=True, separators=(',', ':')))} vs consumer "
                  f"{spec_hash(json.dumps(db, sort_keys=True, separators=(',', ':')))}") if da and db else ""
        message = f"{what}{f' ({hashes})' if hashes else ''}; fields that differ: {', '.join(fields)} ({detail})"
        if not allow:
            raise InputError(message + "; pass the override flag to run anyway")
        warnings.warn(message + "; allowed by override", stacklevel=2)
    return fields
