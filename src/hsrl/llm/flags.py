"""The command-line flags that make an `ExtractionSpec`, shared by every verb that runs an LLM
(`label`, `serve`, `online`): one definition, one help text, one way to build the spec; and the cache flags
(`--cache DIR`, `--no-cache`), shared with `eval`."""

from dataclasses import dataclass, field
from pathlib import Path

from hsrl.errors import InputError
from hsrl.llm.spec import ExtractionSpec


@dataclass(frozen=True, kw_only=True)
class CacheFlags:
    """Where extracted states are cached (`hsrl.llm.cache`): not part of the spec (a cache never changes a state)."""

    cache: str | None = field(default=None, metadata={"help": "also keep extracted states on disk in this folder (LMDB), shared across runs and processes (default: in memory for this run only)", "metavar": "DIR"})
    no_cache: bool = field(default=False, metadata={"help": "compute every state, even one computed before (no cache at all)", "flag_only": True})

    def state_cache(self):
        """The `StateCache` these flags ask for, or None (--no-cache)."""
        if self.no_cache:
            if self.cache:
                raise InputError("--cache and --no-cache contradict each other: pick one")
            return None
        from hsrl.llm.cache import StateCache

        try:
            return StateCache(self.cache)
        except NotADirectoryError as err:
            raise InputError(str(err)) from None


@dataclass(frozen=True, kw_only=True)
class TextFromFlag:
    """Which text the model reads of imported data (`hsrl label`, `hsrl prompt`); the spec's `text_source`. Not a
    flag of the verbs that compute states live (online, serve, eval): they render with hsrl.text."""

    text_from: str = field(default="hsrl", metadata={"help": "the text the model reads: 'hsrl' (hsrl.text renders the observation; imported data's own text_obs is not read) or 'import' (the text_obs `hsrl import` kept, as the other tool wrote it; recorded in the spec as text_source, and such states exist only in the files: online, serve and eval refuse them)"})


@dataclass(frozen=True, kw_only=True)
class FutureFlag:
    """How many next steps of the recorded data each prompt shows (`hsrl label`, `hsrl prompt`): the spec's `future`,
    hindsight labels. Not a flag of the verbs that compute states live (online, serve, eval): the future is not known
    while playing."""

    future: int = field(default=0, metadata={"help": "hindsight labels (offline only): each prompt also shows the next K observations of its environment's episode in the data, in order, with the action taken after each, never past the episode's end or a gap in the recording (fewer then, as the prompt says); needs a template with {future}: --template hindsight or your --prompt-template. Online, serve and eval refuse such specs (the future is not known while playing)", "metavar": "K"})


@dataclass(frozen=True, kw_only=True)
class SpecFlags(CacheFlags):
    model: str = field(default="minilm", metadata={"help": "registry name (minilm, qwen3-4b-thinking, qwen3-vl-4b with --input image), HuggingFace id or local path"})
    layer: int = field(default=-1, metadata={"help": "hidden_states index: 0 embeddings, i block i, -1 last (after the final norm)"})
    tokens: int = field(default=1, metadata={"help": "1 = prompt-only (one forward pass); N > 1 = generate N tokens and pool theirs"})
    pooling: str = field(default="mean", metadata={"help": "'mean' or 'last'"})
    template: str = field(default="auto", metadata={"help": "prompt template: 'chat', 'short', 'forecast' (asks the model to predict the next steps; pair it with --tokens N to pool its forecast), 'hindsight' (`hsrl label --future K` only: shows the next K steps of the data and asks for a summary) or 'auto' (by model kind)"})
    prompt_template: str | None = field(default=None, metadata={"help": "your own prompt: a text file with named placeholders, {observation} (required), {history} (required with --history > 0), {future} (`hsrl label --future K` only), {actions}, {achievements}, {rules}; its text and hash go into the spec", "metavar": "FILE"})
    history: int = field(default=0, metadata={"help": "previous observations of the episode each prompt shows, oldest first, with the action taken after each (0 = the current observation only)", "metavar": "K"})
    temperature: float = field(default=0.6, metadata={"help": "sampling temperature when generating (0 = greedy)"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus sampling when generating"})
    llm_seed: int = field(default=0, metadata={"help": "the LLM's sampling seed when generating (mixed per sample with the prompt; the spec's `seed`)"})
    dtype: str = field(default="auto", metadata={"help": "auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16"})
    input: str = field(default="text", metadata={"help": "what the model reads: 'text' (rendered observation), 'image' (pixels; vision-language models, pixel envs) or 'image+text'"})
    backend: str = field(default="transformers", metadata={"help": "'transformers' or 'vllm' (pip install 'hsrl[vllm]')"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1, ... (default: CUDA when available)"})

    def template_fields(self) -> dict:
        """The spec's template fields these flags give: --template, or --prompt-template FILE's text (checked here:
        a missing file, or an unknown or missing placeholder, is one `InputError` naming the file)."""
        if self.prompt_template is None:
            if self.template == "custom":
                raise InputError("--template custom: give the template's file with --prompt-template FILE")
            if self.template == "hindsight" and not isinstance(self, FutureFlag):
                from hsrl.llm.spec import HINDSIGHT_WHY

                raise InputError(f"--template hindsight: {HINDSIGHT_WHY}")
            return {"template": self.template}
        from hsrl.llm.prompt import TemplateError, parse_template

        if self.template not in ("auto", "custom"):
            raise InputError(f"--template {self.template} and --prompt-template {self.prompt_template}: give one")
        try:
            text = Path(self.prompt_template).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InputError(f"--prompt-template {self.prompt_template}: no such file") from None
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(f"--prompt-template {self.prompt_template}: cannot read it as UTF-8 text ({err})") from None
        try:
            parse_template(text, max(self.history, 0), max(getattr(self, "future", 0), 0))
        except TemplateError as err:
            raise InputError(f"--prompt-template {self.prompt_template}: {err}") from None
        return {"template": "custom", "template_text": text}

    def extraction_spec(self, variant: str) -> ExtractionSpec:
        """The spec these flags give; a bad flag value is an `InputError` naming it."""
        template = self.template_fields()
        try:
            return ExtractionSpec(model=self.model, layer=self.layer, tokens=self.tokens, pooling=self.pooling,
                                  temperature=self.temperature, top_p=self.top_p, seed=self.llm_seed,
                                  dtype=self.dtype, variant=variant, input=self.input, backend=self.backend,
                                  history=self.history, text_source=getattr(self, "text_from", "hsrl"),
                                  future=getattr(self, "future", 0), **template)
        except ValueError as err:  # the spec names its field (`tokens=0; expected ...`): name the flag instead
            field_name, _, rest = str(err).partition("=")
            flag = {"seed": "llm-seed", "text_source": "text-from"}.get(field_name, field_name.replace("_", "-"))
            message = f"--{flag} {rest.replace(';', ':', 1)}" if rest and field_name.isidentifier() else str(err)
            raise InputError(message) from None

    def check_llm(self, variant: str = "classic", layers: bool = True) -> ExtractionSpec:
        """Check the LLM flags before any work: the spec's values, the device (e.g. cuda without CUDA) and the
        model (registry name, local folder, or a hub id that is cached or downloadable) and the layer against the
        model's config (its number of blocks; no weights loaded; `layers=False` leaves the layer to the server that
        extracts); `InputError`, one line."""
        from hsrl.llm.models import check_device, check_layers, check_model_available

        spec = self.extraction_spec(variant)
        check_device(self.device)
        check_model_available(self.model)
        if layers:
            check_layers(self.model, spec.layers)
        return spec

