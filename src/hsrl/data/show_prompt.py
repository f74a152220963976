"""`hsrl prompt`: print the exact prompt the model reads for one row of a dataset (or a given text), chat template
applied, with its token count.

The prompt is built by the same code as labelling (`hsrl.data.label`: the row's text observation and, with
history, its previous observations from the chunk files; with future, its next ones) and the same prompt program and tokenizer as every backend
(`hsrl.llm.preview`). A labelled dataset is shown with the spec it was labelled with (its metadata); raw data and
`--text` with the spec the flags give (the flags of `hsrl label`).
"""

from dataclasses import dataclass, field
from pathlib import Path

from hsrl.errors import InputError
from hsrl.llm.flags import FutureFlag, SpecFlags, TextFromFlag


@dataclass(frozen=True)
class PromptConfig(TextFromFlag, FutureFlag, SpecFlags):
    """Print the exact prompt the model reads for row N of DATA (or for --text), chat template applied, and its
    token count.

    DATA is a dataset folder (rows counted over its chunks in order; within a chunk rows are time-major,
    row = t * num_envs + env) or one chunk file. A labelled DATA is shown with the extraction spec in its metadata
    (what the model read when it was labelled); raw data with the spec the flags give (--model, --template,
    --prompt-template, --history, --future, ...), as `hsrl label` would build it. With --history the row's previous
    observations, and with --future (hindsight) its next ones, come from the files, as labelling takes them.
    """

    data: str | None = field(default=None, metadata={"positional": True, "nargs": "?",
                                                      "help": "dataset folder or chunk file (not needed with --text)"})
    row: int = field(default=0, metadata={"help": "row of DATA: over its chunks in order, time-major within each"})
    text: str | None = field(default=None, metadata={"help": "show the prompt of this text observation instead of a "
                                                             "row of DATA (no history)"})
    env: str = field(default="Craftax-Classic-Symbolic-v1", metadata={"help": "--text: the game the text is from"})

    def check(self) -> None:
        """Every flag before any work: DATA or --text, the row, the spec and the model."""
        from hsrl.env.catalog import check_env_name, env_info

        if (self.data is None) == (self.text is None):
            raise InputError("give DATA (with --row N) or --text TEXT, not both")
        if self.text is not None:
            if not self.text.strip():
                raise InputError("--text is empty")
            spec = self.check_llm(env_info(check_env_name(self.env)).variant, layers=False)
        else:
            spec, _ = self.locate()
        from hsrl.llm.models import check_model_available

        check_model_available(spec.model)

    def locate(self):
        """(the spec to show, (chunk file, row in it))."""
        from hsrl.data import DataFileError, inspect_chunk, list_chunks
        from hsrl.data.label import _variant
        from hsrl.llm.spec import ExtractionSpec

        path = Path(self.data)
        files = [path] if path.is_file() else list_chunks(path)
        if self.row < 0:
            raise InputError(f"--row must be at least 0, got {self.row}")
        start = 0
        for f in files:
            info = inspect_chunk(f)
            if self.row < start + info.num_rows:
                if info.meta.spec_json is not None:
                    try:
                        spec = ExtractionSpec.from_json(info.meta.spec_json)
                    except ValueError as err:
                        raise DataFileError(f, "meta", f"its extraction spec is not one this hsrl reads ({err})")
                else:
                    spec = self.extraction_spec(_variant(info.meta))
                return spec, (f, self.row - start)
            start += info.num_rows
        raise InputError(f"--row {self.row}: {self.data} has {start} rows (0..{start - 1})")


def run_prompt(config: PromptConfig) -> int:
    from hsrl.env.catalog import env_info
    from hsrl.llm.preview import preview_prompt

    history, future = [], None
    if config.text is not None:
        spec = config.extraction_spec(env_info(config.env).variant)
        observation, where, source = config.text, "--text", "the flags"
    else:
        from hsrl.data import read_chunk
        from hsrl.data.label import _texts, chunk_future, chunk_history

        spec, (path, row) = config.locate()
        chunk = read_chunk(path)
        texts = _texts(chunk, spec.text_source)
        observation = str(texts[row])
        if spec.history:
            history = chunk_history(chunk, texts, spec.history, spec.text_source)[0][row]
        if spec.future:
            future = chunk_future(chunk, texts, spec.future, spec.text_source)[0][row]
        E = chunk.meta.num_envs
        where = f"{path.name} row {row} (step {row // E} of env {row % E})"
        source = "its labels' metadata" if chunk.meta.spec_json is not None else "the flags"
    try:
        view = preview_prompt(spec, observation, history, future)
    except ValueError as err:
        raise InputError(str(err)) from None
    print(f"spec {spec.hash} (from {source}): model {spec.model}, template {view.template}"
          + (f" {spec.template_hash}" if spec.template_hash else "") + f", history {spec.history}"
          + (f", future {spec.future} (hindsight)" if spec.future else ""))
    shown = [f"{len(history)} of up to {spec.history} previous observations"] if spec.history else []
    if spec.future:
        shown.append(f"{0 if future is None else len(future.entries)} of up to {spec.future} next observations")
    print(f"{where}: {', '.join(shown)}" if shown else where)
    counts = f"{view.tokens} tokens"
    if view.prefix_tokens:
        counts += f", the first {view.prefix_tokens} the prefix every prompt shares"
    if view.added:
        counts += f"; the tokenizer adds {', '.join(view.added)}"
    print(f"---- prompt ({counts}) ----")
    print(view.text)
    print("---- end of prompt ----")
    if view.context is not None and view.tokens + (spec.tokens if spec.generates else 0) > view.context:
        print(f"this prompt does not fit {spec.model}'s context of {view.context} tokens: extraction refuses it")
        return 1
    return 0
