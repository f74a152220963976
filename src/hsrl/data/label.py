"""`hsrl label` and `hsrl extract`: add LLM hidden states to trajectory chunks, resumably.

For every chunk of IN_DIR, OUT_DIR gets a chunk of the same name holding every input key unchanged plus
`text_obs` (rendered by hsrl.text where absent), `text_generated`, `hidden_state` (pooled (N, H) float32,
or per-token (N, T, H) float16 with `hidden_tokens` when token states are saved) and the extraction spec
JSON in the metadata; generation also stores the generated token ids (`generated_ids`, `generated_len`), which
`hsrl extract` pools: re-tokenising text need not give the same ids back (a budget that ends inside a multi-byte
character decodes to U+FFFD; a model may emit a non-canonical BPE sequence). Data labelled without the ids is
re-tokenised only where each row's token count checks out, else refused naming the rows.

With `--history K` each row's prompt also shows the K previous observations of its environment's episode and the
actions taken after them (`row_history`): rows are time-major (`row = t * num_envs + env`), the history reaches back
into the chunks before (`steps_before`, across chunk boundaries, as long as the files follow on) and never past an
episode's start (a step after `done`), so an episode's first rows have fewer (the prompt says how many).
With `--future K` (hindsight labels: `--template hindsight`, or a template with `{future}`) each prompt also shows the
next K observations of its environment's episode in the data, in order, with the action taken after each
(`row_future`): they reach into the chunks after (`steps_after`) and never past the episode's last step, a gap in
the recording or the data's end (fewer then; the prompt says which). Such states exist only for recorded data: the
spec records `future`, and online, serve and eval refuse it (the future is not known while playing). Label a
recording once it is complete: a finished file's last rows keep the future the data showed when it was labelled.

The text the model reads is hsrl.text's rendering (the chunk's text_obs where hsrl rendered it, else rendered
now), the same as online, serve and eval compute. Imported data (`hsrl import`) may hold the other tool's text_obs:
it is not read unless `--text-from import` asks for it (the spec's `text_source`: such states exist only in the
files, so the live verbs refuse that spec), and labelling imported data says in one line which text it reads
(`text_line`). Where the model read hsrl.text's rendering of imported data, the output's text_obs is that text.

A spec that reads images (`--input image` or `image+text`, vision-language models) takes them from the
chunk's `obs`, which must be pixels (a Pixels env's data; stored as uint8); with `image+text` the text
observation comes along as for text models.

Reliability: each batch's result is saved atomically under OUT_DIR/.partial/<chunk>/ before the next
starts, so a process killed at any moment resumes at the first unfinished batch; the final chunk is
assembled from the batch files (per-token states streamed, never held whole) and renamed into place,
so it appears only complete. Finished outputs are skipped when their spec is the one asked for (fields the
backend resolves from 'auto' aside); files of OUT_DIR made with other settings are refused before any work, naming
the fields, unless --overwrite. An input file whose headers are bad is reported and skipped; the others are
labelled. Values are checked before anything is written (`hsrl.data.chunks.value_check`: finite observations,
actions in the env's range): a bad value is one `DataFileError` naming the file, field and row, and nothing runs.
Saved batches are reused only for the same input file (its size and the blake2b hash of its bytes), spec, batch
size and mode. Sampling seeds are derived per sample from the spec's seed and the prompt, so a resumed run writes
the same values as an uninterrupted one.
"""

import contextlib
import hashlib
import json
import shutil
import time
import warnings
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from hsrl.llm.flags import CacheFlags, FutureFlag, SpecFlags, TextFromFlag
from hsrl.atomic import atomic_path, remove_temporaries
from hsrl.llm.tokens import pad_generated, retokenize_checked, unpad_generated
from hsrl.data.chunks import (
    ChunkMeta, DataFileError, check_chunk_values, decode_text, encode_text, inspect_chunk, list_chunks, read_chunk,
    read_meta, to_time_env, write_chunk_streamed,
)
from hsrl.errors import InputError

PARTIAL_DIR = ".partial"


@dataclass(frozen=True, kw_only=True)
class RayFlags:
    ray: str | None = field(default=None, metadata={"help": "distribute files over a Ray cluster: --ray ADDRESS, or --ray "
                                                            "alone to start a local Ray instance", "nargs": "?", "const": "local",
                                                            "metavar": "ADDRESS"})
    workers: int | None = field(default=None, metadata={"help": "Ray: model replicas (default: GPUs / gpus-per-worker, or CPUs)"})
    gpus_per_worker: float = field(default=0.0, metadata={"help": "Ray: GPUs per model replica (0 = CPU workers)"})
    retries: int = field(default=3, metadata={"help": "Ray: times a file is retried when its worker dies"})


@dataclass(frozen=True)
class LabelConfig(TextFromFlag, FutureFlag, SpecFlags, RayFlags):
    """Label trajectory chunks with LLM hidden states.

    Reads every chunk_NNNNNN.npz of IN_DIR, renders text_obs where absent, builds prompts, extracts hidden
    states and writes OUT_DIR/chunk_NNNNNN.npz with text_generated, hidden_state and the extraction spec.
    Imported data is rendered by hsrl.text too unless --text-from import (one line says which text is read).
    With --future K (hindsight labels, --template hindsight) each prompt also shows the next K steps of its episode in
    the data: states for offline use only (online, serve and eval refuse the spec).
    Other keys are kept unchanged. Resumable: rerun the same command after a crash. Exits non-zero if any
    input file was bad (listing them) after labelling the rest.
    """

    in_dir: str = field(metadata={"positional": True, "help": "dataset folder to label"})
    out_dir: str = field(metadata={"positional": True, "help": "output folder (created)"})
    batch_size: int = field(default=32, metadata={"help": "samples per model call; also the unit of saved progress"})
    save_token_states: bool = field(default=False, metadata={"help": "store per-token states (N, T, H) float16 instead of pooled"})
    overwrite: bool = field(default=False, metadata={"help": "relabel files of OUT_DIR labelled with other settings "
                                                             "(without it such files are refused, naming the fields)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def check(self) -> None:
        """Every flag, before any work: folders, batch size, Ray flags, the spec, the device and the model, and the
        text the model reads of each file (`text_line`)."""
        files = _check_folders(self)
        spec = self.check_llm()
        text_line(files, spec)


@dataclass
class LabelSummary:
    labelled: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already finished
    failed: dict[str, str] = field(default_factory=dict)  # file -> reason
    samples: int = 0
    seconds: float = 0.0  # labelling time, model loading excluded
    load_seconds: float = 0.0
    cache: dict | None = None  # the state cache's hits, misses, rejected entries (in-process labelling with a cache)

    def report(self) -> str:
        if self.skipped and not self.labelled and not self.failed:  # a rerun with nothing to do: one line
            return f"all {len(self.skipped)} files are already done with these settings; nothing to do"
        rate = self.samples / self.seconds if self.seconds > 0 else 0.0
        lines = [f"labelled {len(self.labelled)} files ({self.samples} samples, {rate:.1f} samples/s), "
                 f"{len(self.skipped)} already done, {len(self.failed)} failed (model load {self.load_seconds:.1f} s)"]
        if self.cache:
            asked = self.cache["hits"] + self.cache["misses"]
            lines.append(f"state cache: {self.cache['hits']} of {asked} samples found "
                         f"({self.cache['hits'] / max(asked, 1):.1%} hit rate), {self.cache['rejected']} bad entries "
                         f"recomputed")
        lines += [f"  FAILED {name}: {why}" for name, why in self.failed.items()]
        return "\n".join(lines)


def _variant(meta: ChunkMeta) -> str:
    from hsrl.env.catalog import check_env_name

    return "classic" if "Classic" in check_env_name(meta.env_name) else "craftax"


def _images(chunk, spec) -> np.ndarray | None:
    """The chunk's pixel observations when the spec reads images, else None."""
    if not spec.reads_images:
        return None
    if chunk.meta.obs_kind != "pixels":
        raise DataFileError(chunk.path, "obs", f"{chunk.meta.obs_kind} observations of {chunk.meta.env_name}, but "
                                               f"--input {spec.input} reads images: label data of a Pixels env")
    return chunk["obs"]


def imported_text(meta: ChunkMeta) -> bool:
    """Whether a chunk's text_obs is the rendering of the tool its data was imported from (`hsrl import`), not
    hsrl.text's."""
    from hsrl.data.importer import IMPORT_KEY, IMPORTED_TEXT

    made = meta.extra.get(IMPORT_KEY) if isinstance(meta.extra, dict) else None
    return isinstance(made, dict) and made.get("text_obs") == IMPORTED_TEXT


def text_line(files: list[Path], spec) -> str | None:
    """The line `hsrl label` prints when IN_DIR holds imported data: which text the model reads (None for data
    hsrl made, or a spec that reads no text). Refuses (InputError, one line naming the file) `--text-from import`
    for a file without the imported text_obs, and imported pixel data whose only text is the other tool's
    without it. Files whose headers cannot be read are left to the labelling, which reports them."""
    from hsrl.data.importer import IMPORT_KEY
    from hsrl.text import RENDERER_VERSION

    if not spec.reads_text:
        return None
    infos = []
    for f in files:
        with contextlib.suppress(DataFileError, OSError):
            infos.append(inspect_chunk(f))
    imported = [i for i in infos if isinstance(i.meta.extra, dict) and IMPORT_KEY in i.meta.extra]
    if spec.text_source == "import":
        for i in infos:
            if not (imported_text(i.meta) and "text_obs" in i.fields):
                why = "its source held no text_obs" if i in imported else "it was not made by `hsrl import`"
                raise InputError(f"{i.path}: --text-from import labels the text_obs `hsrl import` kept from the other "
                                 f"tool, but this file has none ({why}): label hsrl.text's rendering (--text-from "
                                 f"hsrl)")
        return ("text: the imported text_obs, as the other tool rendered it (--text-from import; the spec records "
                "text_source 'import', so online, serve and eval cannot compute these states)")
    if not imported:
        return None
    for i in imported:
        if i.meta.obs_kind != "symbolic" and imported_text(i.meta):
            raise InputError(f"{i.path}: pixel observations cannot be rendered by hsrl.text, and the file's text_obs "
                             f"is the other tool's rendering: pass --text-from import to label that text")
    kept = any(imported_text(i.meta) and "text_obs" in i.fields for i in imported)
    return (f"text: hsrl.text renders the observations (renderer version {RENDERER_VERSION}), as online, serve and "
            f"eval do" + ("; the imported text_obs (the other tool's rendering) is not read: --text-from import "
                          "labels it instead" if kept else ""))


def _texts(chunk, source: str = "hsrl") -> np.ndarray:
    """The text the model reads of each row: hsrl.text's (the chunk's text_obs where hsrl rendered it, else rendered
    now), or with source 'import' the text_obs `hsrl import` kept from the other tool."""
    foreign = "text_obs" in chunk and imported_text(chunk.meta)
    if source == "import":
        if not foreign:
            raise DataFileError(chunk.path, "text_obs", "--text-from import reads the text_obs `hsrl import` kept, "
                                                         "but this file has none")
        return chunk["text_obs"]
    if "text_obs" in chunk and not foreign:
        return chunk["text_obs"]
    if chunk.meta.obs_kind != "symbolic":
        raise DataFileError(chunk.path, "text_obs", "missing, and pixel observations cannot be rendered as text "
                                                     "(collect with text, which renders the symbolic observation)"
                            if not foreign else "the other tool's rendering, and pixel observations cannot be "
                                                "rendered by hsrl.text: pass --text-from import to label that text")
    from hsrl.text import render_text

    return np.asarray(render_text(chunk["obs"], _variant(chunk.meta)))


# ---- history and future: each row's previous (and, for hindsight labels, next) steps in its episode -----------------


@dataclass
class StepsBefore:
    """The steps of one run just before a chunk (`steps_before`) or just after it (`steps_after`), time-major, at
    most K: texts, actions and done flags, each (P, num_envs), and the files they came from (in time order). P = 0 at
    a run's first (last) chunk."""

    texts: np.ndarray
    actions: np.ndarray
    done: np.ndarray
    files: list[Path] = field(default_factory=list)


StepsAfter = StepsBefore


def steps_before(src: Path, k: int, text_source: str = "hsrl") -> StepsBefore:
    """The last `k` steps before chunk `src`, from the chunks of its folder before it (across as many files as it
    takes), as long as each follows on from the one before (`check_consecutive`: same env and envs, first_steps
    that follow on, the same segment). History never reaches past a run's first chunk, a gap in the recording
    (`ChunkMeta.segment`) or a chunk that does not follow its predecessor."""
    return _adjacent_steps(src, k, text_source, later=False)


def steps_after(src: Path, k: int, text_source: str = "hsrl") -> StepsAfter:
    """The first `k` steps after chunk `src`, from the chunks of its folder after it (across as many files as it
    takes), as long as each follows on from the one before, as `steps_before`: a future window never reaches past
    the data's last chunk, a gap in the recording or a chunk that does not follow on."""
    return _adjacent_steps(src, k, text_source, later=True)


def _adjacent_steps(src: Path, k: int, text_source: str, later: bool) -> StepsBefore:
    from hsrl.data.chunks import check_consecutive

    files = list_chunks(src.parent)
    index = next(i for i, f in enumerate(files) if f.name == src.name)
    cur = inspect_chunk(src)
    parts: list = []
    have = 0
    for path in (files[index + 1:] if later else reversed(files[:index])) if k > 0 else []:
        other = inspect_chunk(path)
        if other.meta.segment != cur.meta.segment:  # a gap in the recording: no episode continues across it
            break
        try:
            check_consecutive([cur, other] if later else [other, cur])
        except DataFileError:
            break
        keys = ["action", "done"] + (["text_obs"] if "text_obs" in other.fields else ["obs"])
        if "text_obs" in other.fields and imported_text(other.meta) and text_source == "hsrl":
            keys[-1] = "obs"  # the other tool's text is not the one read: hsrl.text renders the obs
        chunk = read_chunk(path, keys)
        take = min(k - have, chunk.num_steps)
        E = chunk.meta.num_envs
        rows = slice(None, take) if later else slice(-take, None)
        part = (to_time_env(_texts(chunk, text_source), E)[rows], chunk.time_major("action")[rows],
                chunk.time_major("done")[rows], path)
        if later:
            parts.append(part)
        else:
            parts.insert(0, part)
        have += take
        cur = other
        if have == k:
            break
    E = cur.meta.num_envs
    if not parts:
        return StepsBefore(np.empty((0, E), object), np.empty((0, E), np.int64), np.empty((0, E), bool))
    return StepsBefore(np.concatenate([p[0] for p in parts]).astype(object), np.concatenate([p[1] for p in parts]),
                       np.concatenate([p[2] for p in parts]), [p[3] for p in parts])


def row_history(texts: np.ndarray, actions: np.ndarray, done: np.ndarray, num_envs: int, k: int,
                before: StepsBefore | None = None,
                segment_start: np.ndarray | None = None) -> list[list[tuple[str, int]]]:
    """Each row's history (rows time-major, `row = t * num_envs + env`): the previous observations of its
    environment's episode, oldest first, with the action taken after each, at most `k`; none before the first step
    of an episode (a step after `done`, or a row of `segment_start`, (N,) bool: the first step after a gap in the
    recording, `hsrl.data.chunks.episode_starts`). `before`: the steps before the chunk (`steps_before`)."""
    from hsrl.data.chunks import episode_age

    E = num_envs
    P = 0 if before is None else len(before.texts)
    all_texts = to_time_env(np.asarray(texts, dtype=object), E)
    all_actions = to_time_env(np.asarray(actions), E)
    all_done = to_time_env(np.asarray(done, dtype=bool), E)
    if P:
        all_texts = np.concatenate([before.texts, all_texts])
        all_actions = np.concatenate([before.actions, all_actions])
        all_done = np.concatenate([before.done, all_done])
    if segment_start is not None:  # the steps before a chunk are of its segment (`steps_before`)
        segment_start = np.concatenate([np.zeros(P * E, bool), np.asarray(segment_start, bool)])
    S = len(all_texts)
    lengths = np.minimum(episode_age(all_done.reshape(-1), E, segment_start), k)  # as far as the rows show
    out = []
    for s in range(P, S):
        for e in range(E):
            out.append([(str(all_texts[s - j, e]), int(all_actions[s - j, e])) for j in range(lengths[s, e], 0, -1)])
    return out


def row_future(texts: np.ndarray, actions: np.ndarray, done: np.ndarray, num_envs: int, k: int,
               after: StepsAfter | None = None, segment_start: np.ndarray | None = None) -> list:
    """Each row's future (rows time-major, `row = t * num_envs + env`), for hindsight labels: the next observations
    of its environment's episode, in order, with the action taken after each, at most `k`
    (`hsrl.llm.prompt.Future`); none past the episode's last step (a row whose `done` is set), the first step after
    a gap (`segment_start`, (N,) bool, `hsrl.data.chunks.segment_start_rows`) or the last row (`after`: the steps
    after the chunk, `steps_after`). `ended` says the episode's last step is the last one shown (the row itself when
    none is), so the prompt can tell an episode's end from the data's."""
    from hsrl.data.chunks import episode_remaining
    from hsrl.llm.prompt import Future

    E = num_envs
    P = 0 if after is None else len(after.texts)
    all_texts = to_time_env(np.asarray(texts, dtype=object), E)
    all_actions = to_time_env(np.asarray(actions), E)
    all_done = to_time_env(np.asarray(done, dtype=bool), E)
    S = len(all_texts)
    if P:
        all_texts = np.concatenate([all_texts, after.texts])
        all_actions = np.concatenate([all_actions, after.actions])
        all_done = np.concatenate([all_done, after.done])
    if segment_start is not None:  # the steps after a chunk are of its segment (`steps_after`)
        segment_start = np.concatenate([np.asarray(segment_start, bool), np.zeros(P * E, bool)])
    remaining = episode_remaining(all_done.reshape(-1), E, segment_start)  # as far as the rows show
    out = []
    for s in range(S):
        for e in range(E):
            n = min(int(remaining[s, e]), k)
            ended = bool(remaining[s, e] <= k and all_done[s + remaining[s, e], e])
            out.append(Future(tuple((str(all_texts[s + j, e]), int(all_actions[s + j, e])) for j in range(1, n + 1)),
                              ended))
    return out


def chunk_future(chunk, texts: np.ndarray, k: int, text_source: str = "hsrl") -> tuple[list, list[Path]]:
    """Every row's future in a chunk read from its folder (`row_future` with `steps_after`), and the later files it
    reads."""
    after = steps_after(chunk.path, k, text_source)
    return row_future(texts, chunk["action"], chunk["done"], chunk.meta.num_envs, k, after), after.files


def chunk_history(chunk, texts: np.ndarray, k: int, text_source: str = "hsrl"
                  ) -> tuple[list[list[tuple[str, int]]], list[Path]]:
    """Every row's history in a chunk read from its folder (`row_history` with `steps_before`), and the earlier
    files it reads."""
    before = steps_before(chunk.path, k, text_source)
    return row_history(texts, chunk["action"], chunk["done"], chunk.meta.num_envs, k, before), before.files


def file_digest(path: Path) -> str:
    """The blake2b hex digest of a file's bytes (read in blocks), which identifies an input in saved progress."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "blake2b").hexdigest()


class Labeller:
    """Labels chunk files with one extractor, batch by batch, saving progress after each batch.

    mode 'label' runs the spec (prompt-only or generation); mode 'reextract' recomputes states of the tokens
    generated before (the input's `generated_ids`; prefill only).
    """

    def __init__(self, extractor, batch_size: int, save_token_states: bool, mode: str = "label"):
        self.extractor = extractor
        self.spec_json = extractor.spec.to_json()
        self.batch_size = int(batch_size)
        self.save_tokens = bool(save_token_states)
        self.mode = mode

    def _run_batch(self, texts, generated, images, history=None, future=None):
        ex = self.extractor
        texts = None if texts is None else list(texts)
        more = {} if future is None else {"future": future}
        if self.mode == "reextract":  # `generated`: the token ids generation produced (never re-tokenised text)
            res = ex.reextract(texts, generated_ids=generated, return_token_states=self.save_tokens, images=images,
                               history=history, **more)
        else:
            res = ex.extract(texts, return_token_states=self.save_tokens, images=images, history=history, **more)
        out = {"hidden": res.hidden_state.astype(np.float32), "text_generated": encode_text(res.generated_text),
               "num_tokens": np.asarray(res.num_tokens, np.int32)}
        if ex.spec.generates:
            out["generated_ids"], out["generated_len"] = pad_generated(res.generated_ids)
        if self.save_tokens:
            (states,) = res.token_states.values()
            out["token_states"] = states.astype(np.float16)
        if not np.all(np.isfinite(out["hidden"])):
            raise RuntimeError("the model returned non-finite hidden states")
        return out

    def label_file(self, src: Path, dst: Path, on_batch=None) -> int:
        """Label one chunk into `dst`; returns the number of rows. Resumes from saved batches."""
        digest = file_digest(src)  # before reading: a file replaced in between counts as new on the next run
        chunk = read_chunk(src)
        spec = self.extractor.spec
        images = _images(chunk, spec)
        texts = _texts(chunk, spec.text_source) if spec.reads_text else None
        generated = self._generated_ids(chunk) if self.mode == "reextract" else None
        history, earlier = chunk_history(chunk, texts, spec.history, spec.text_source) if spec.history else (None, [])
        future, later = chunk_future(chunk, texts, spec.future, spec.text_source) if spec.future else (None, [])
        n = chunk.num_rows
        partial = dst.parent / PARTIAL_DIR / dst.stem
        self._open_partial(partial, src, n, digest, earlier, later)
        batch_files = []
        for i, start in enumerate(range(0, n, self.batch_size)):
            path = partial / f"batch_{i:06d}.npz"
            batch_files.append(path)
            sl = slice(start, min(n, start + self.batch_size))
            if path.exists() and self._saved_batch_ok(path, sl.stop - sl.start):
                continue
            out = self._run_batch(None if texts is None else texts[sl], None if generated is None else generated[sl],
                                  None if images is None else images[sl], None if history is None else history[sl],
                                  None if future is None else future[sl])
            with atomic_path(path) as f:
                np.savez(f, allow_pickle=False, **out)
            if on_batch is not None:
                on_batch(sl.stop - sl.start)
        self._assemble(chunk, texts, batch_files, dst)
        shutil.rmtree(partial)
        return n

    def _saved_batch_ok(self, path: Path, rows: int) -> bool:
        """Whether a saved batch file is whole and holds `rows` rows; a broken one is removed with a warning, and
        the batch is computed again."""
        keys = {"hidden", "text_generated", "num_tokens"} | ({"token_states"} if self.save_tokens else set())
        if self.extractor.spec.generates:
            keys |= {"generated_ids", "generated_len"}
        try:
            with np.load(path, allow_pickle=False) as z:
                if set(z.files) != keys or any(len(z[k]) != rows for k in keys):
                    raise ValueError(f"holds {sorted(z.files)}, not {rows} rows of {sorted(keys)}")
            return True
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            warnings.warn(f"{path}: saved batch is corrupt ({type(err).__name__}: {err}); discarding it and "
                          f"computing the batch again", stacklevel=2)
            path.unlink()
            return False

    def _generated_ids(self, chunk) -> list[list[int]]:
        """The generated token ids to re-extract: the stored `generated_ids`, or for data labelled without them the
        re-tokenised `text_generated`, only where each row's count matches what was generated (its stored per-token
        count, or the spec's token budget unless it ended at end-of-sequence); otherwise refused naming the rows."""
        if "generated_ids" in chunk:
            try:
                return unpad_generated(chunk["generated_ids"], chunk["generated_len"])
            except ValueError as err:
                raise DataFileError(chunk.path, "generated_ids", str(err)) from None
        if "text_generated" not in chunk:
            raise DataFileError(chunk.path, "text_generated", "missing: `hsrl extract` re-extracts generated tokens; "
                                                              "label the data first")
        ex = self.extractor
        tokenizer = getattr(ex, "tokenizer", None) or ex.loaded.tokenizer
        counts = chunk["hidden_tokens"] if "hidden_tokens" in chunk else None
        ids, bad = retokenize_checked(tokenizer, chunk["text_generated"].tolist(), ex._eos_ids, ex.spec.tokens, counts)
        if bad:
            raise DataFileError(chunk.path, "text_generated", (
                f"no generated_ids, and the re-tokenised text does not check out (token count, or U+FFFD) in "
                f"{len(bad)} rows ({bad[:20]}{' ...' if len(bad) > 20 else ''}): relabel with this hsrl, which stores "
                f"the ids"))
        return ids

    def _open_partial(self, partial: Path, src: Path, n: int, digest: str, earlier: list[Path] = (),
                      later: list[Path] = ()) -> None:
        """Keep saved batches only if they were made by the same spec, batch size and input (its size and the
        blake2b hash of its bytes: an input replaced by another of the same size is labelled afresh; with history,
        also the earlier files its rows' histories come from; with future, the later files its rows' futures come
        from)."""
        stamp = {"spec": self.spec_json, "batch_size": self.batch_size, "rows": n, "mode": self.mode,
                 "token_states": self.save_tokens, "input_bytes": src.stat().st_size, "input_blake2b": digest}
        if earlier:
            stamp["history_inputs"] = [[p.name, file_digest(p)] for p in earlier]
        if later:
            stamp["future_inputs"] = [[p.name, file_digest(p)] for p in later]
        marker = partial / "progress.json"
        with contextlib.suppress(OSError, ValueError):  # an unreadable marker counts as another run's
            if json.loads(marker.read_text()) == stamp:
                return
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        with atomic_path(marker) as f:
            f.write(json.dumps(stamp).encode())

    def _assemble(self, chunk, texts, batch_files, dst: Path) -> None:
        def load(path, key):
            with np.load(path, allow_pickle=False) as z:
                return z[key]

        arrays = dict(chunk.arrays)
        if texts is not None:  # an image-only spec keeps the chunk's own text_obs, if any
            arrays["text_obs"] = texts
        arrays["text_generated"] = np.concatenate([decode_text(load(p, "text_generated")) for p in batch_files])
        arrays.pop("generated_ids", None), arrays.pop("generated_len", None)
        if self.extractor.spec.generates:
            ids = [load(p, "generated_ids") for p in batch_files]
            width = max(i.shape[1] for i in ids)
            arrays["generated_ids"] = np.concatenate([np.pad(i, ((0, 0), (0, width - i.shape[1])), constant_values=-1)
                                                      for i in ids])
            arrays["generated_len"] = np.concatenate([load(p, "generated_len") for p in batch_files])
        meta = replace(chunk.meta, spec_json=self.spec_json)
        if texts is not None and imported_text(chunk.meta) and self.extractor.spec.text_source == "hsrl":
            from hsrl.data.importer import IMPORT_KEY

            record = {**meta.extra[IMPORT_KEY], "text_obs": "rendered by hsrl.text when labelled (the other tool's "
                                                            "text_obs was replaced by the text the model read)"}
            meta = replace(meta, extra={**meta.extra, IMPORT_KEY: record})
        streamed = {}
        if self.save_tokens:
            counts = np.concatenate([load(p, "num_tokens") for p in batch_files])
            width = int(counts.max())
            hidden = self.extractor.hidden_size
            arrays["hidden_tokens"] = counts

            def blocks():  # pad each batch to the file's widest token count, one batch in memory at a time
                for p in batch_files:
                    s = load(p, "token_states")
                    padded = np.zeros((len(s), width, hidden), np.float16)
                    padded[:, : s.shape[1]] = s[:, :width]
                    yield padded

            streamed["hidden_state"] = ((len(counts), width, hidden), np.float16, blocks())
        else:
            arrays["hidden_state"] = np.concatenate([load(p, "hidden") for p in batch_files])
            arrays.pop("hidden_tokens", None)
        write_chunk_streamed(dst, arrays, meta, streamed)


def resolved_fields(requested) -> list[str]:
    """The spec fields a backend fills in when the request leaves them 'auto' (template and its version, dtype):
    a finished file's values for them are whatever the backend chose, so they are not compared."""
    ignore = []
    if requested.template == "auto":
        ignore += ["template", "template_version"]
    if requested.dtype == "auto":
        ignore.append("dtype")
    return ignore


def _finished_differences(done: Path, requested, save_token_states: bool) -> list[str]:
    """How a finished output file differs from what is asked now: its spec's differing fields
    (`spec_differences`, ignoring what the backend resolves) and the per-token / pooled form; [] when it is done."""
    from hsrl.llm.spec import spec_differences

    info = inspect_chunk(done)
    differ = spec_differences(info.meta.spec_json, requested, ignore=resolved_fields(requested))
    if ("hidden_tokens" in info.fields) != bool(save_token_states):
        differ.append("save_token_states")
    return differ


def _label_folder(in_dir: str, out_dir: str, make_labeller, config, what: str, requested_spec) -> LabelSummary:
    """Label every chunk of `in_dir` into `out_dir`. `requested_spec(meta)`: the spec asked for an input file. A file
    finished before counts as done only when its spec is the one asked for; otherwise nothing runs (InputError
    naming the fields, unless config.overwrite, which relabels those files)."""
    from tqdm.auto import tqdm

    summary = LabelSummary()
    files = _check_folders(config)  # for callers that did not run config.check()
    out = Path(out_dir)
    rows, todo, stale = {}, [], {}
    for f in files:
        try:
            info = inspect_chunk(f)  # validates headers and meta
            rows[f] = info.num_rows
        except (DataFileError, OSError) as err:
            summary.failed[f.name] = str(err)
            continue
        if (out / f.name).exists():
            try:
                differ = _finished_differences(out / f.name, requested_spec(info.meta), config.save_token_states)
            except (DataFileError, OSError, ValueError) as err:
                differ = [f"<{err}>"]
            if not differ:
                summary.skipped.append(f.name)
                continue
            stale[f.name] = differ
        todo.append(f)
    if stale and not config.overwrite:
        fields = sorted({d for differ in stale.values() for d in differ})
        raise InputError(f"{out} holds {len(stale)} files {what}led with other settings (fields that differ: "
                         f"{', '.join(fields)}; e.g. {next(iter(stale))}): give another OUT_DIR, or --overwrite to "
                         f"replace them")
    for f in todo:  # values (finite observations, actions in range) before anything is written: one error, exit 2
        check_chunk_values(f)
    out.mkdir(parents=True, exist_ok=True)
    remove_temporaries(out, "chunk_*.npz")  # left by a process killed while writing a final file
    start = time.perf_counter()
    if not todo:  # nothing to do: no model loaded, no empty progress bar
        _remove_finished_partials(out, summary)
        return summary
    bar = tqdm(total=sum(rows[f] for f in todo), unit="sample", desc=what, disable=not config.progress,
               dynamic_ncols=True)
    if config.ray is not None:
        from hsrl.data.label_ray import label_files_ray

        done, failed = label_files_ray(todo, out, make_labeller, address=config.ray, workers=config.workers,
                                       gpus_per_worker=config.gpus_per_worker, retries=config.retries,
                                       on_file=lambda f, n: bar.update(rows[f]))
        summary.labelled += [f.name for f in todo if f.name in done]
        summary.samples += sum(done.values())
        summary.failed.update(failed)
    labeller = None
    for i, f in enumerate(todo if config.ray is None else []):
        bar.set_postfix(file=f"{i + 1}/{len(todo)}")
        try:
            meta = read_meta(f)
            if labeller is None:
                t_load = time.perf_counter()
                labeller = make_labeller(meta)
                summary.load_seconds = time.perf_counter() - t_load
            elif labeller.extractor.spec.variant != _variant(meta):
                raise DataFileError(f, "meta", f"env {meta.env_name} differs from the other files' game variant")
            summary.samples += labeller.label_file(f, out / f.name, on_batch=bar.update)
            summary.labelled.append(f.name)
        except DataFileError as err:
            summary.failed[f.name] = str(err)
    bar.close()
    if labeller is not None and labeller.extractor.cache is not None:
        summary.cache = labeller.extractor.cache.counts()
    _remove_finished_partials(out, summary)
    summary.seconds = time.perf_counter() - start - summary.load_seconds
    return summary


def _check_ray_flags(config) -> None:
    if config.workers is not None and config.workers < 1:
        raise InputError(f"--workers must be at least 1, got {config.workers}")
    if config.gpus_per_worker < 0 or config.retries < 0:
        raise InputError("--gpus-per-worker and --retries must not be negative")


def _check_folders(config) -> list[Path]:
    """IN_DIR's chunk files, after checking the folders, the batch size and the Ray flags."""
    files = list_chunks(config.in_dir)  # FileNotFoundError / DataFileError naming the folder
    if Path(config.out_dir).resolve() == Path(config.in_dir).resolve():
        raise InputError("OUT_DIR must differ from IN_DIR (inputs are never modified)")
    if config.batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {config.batch_size}")
    _check_ray_flags(config)
    return files


def _remove_finished_partials(out: Path, summary: LabelSummary) -> None:
    """Remove the saved batches of every finished file (a run killed between writing a file and removing its
    batches leaves them), then `.partial/` itself when empty; unfinished files' batches stay for the rerun."""
    for name in summary.skipped + summary.labelled:
        shutil.rmtree(out / PARTIAL_DIR / Path(name).stem, ignore_errors=True)
    with contextlib.suppress(OSError):
        (out / PARTIAL_DIR).rmdir()


def label_dataset(config: LabelConfig) -> LabelSummary:
    spec = config.extraction_spec("classic")  # a bad spec flag fails before any folder is made
    line = text_line(_check_folders(config), spec)  # imported data: which text the model reads, before any work
    if line is not None:
        print(line, flush=True)
    if config.ray is not None and config.backend == "vllm":
        # One vLLM engine per GPU (Ray gives each actor its own CUDA_VISIBLE_DEVICES); on CPUs one engine, which
        # uses every core by itself.
        if config.gpus_per_worker not in (0, 1):
            raise InputError(f"--backend vllm runs one engine per GPU: --gpus-per-worker 1 (or 0 on CPUs), "
                             f"not {config.gpus_per_worker}")
        if config.workers is None and config.gpus_per_worker == 0:
            config = replace(config, workers=1)

    def make(meta: ChunkMeta):
        from hsrl.llm import make_extractor

        spec = config.extraction_spec(_variant(meta))
        extractor = make_extractor(spec, cache=config.state_cache(), device=config.device,
                                   batch_size=config.batch_size)
        return Labeller(extractor, config.batch_size, config.save_token_states)

    return _label_folder(config.in_dir, config.out_dir, make, config, "label",
                         lambda meta: config.extraction_spec(_variant(meta)))


def run_label(config: LabelConfig) -> int:
    summary = label_dataset(config)
    print(summary.report())
    return 1 if summary.failed else 0


@dataclass(frozen=True)
class ExtractConfig(CacheFlags, RayFlags):
    """Re-extract hidden states of already labelled data for another layer or pooling.

    Reads the extraction spec and generated token ids (generated_ids) of IN_DIR's chunks and runs one prefill forward
    pass over prompt + generated tokens (no generation), so the generated tokens' states come from the same tokens.
    Data labelled without generated_ids is re-tokenised from text_generated where the token counts check out.
    Data labelled prompt-only is simply re-run prompt-only with the new layer/pooling.
    """

    in_dir: str = field(metadata={"positional": True, "help": "labelled dataset folder"})
    out_dir: str = field(metadata={"positional": True, "help": "output folder (created)"})
    layer: int = field(default=-1, metadata={"help": "hidden_states index: 0 embeddings, i block i, -1 last"})
    pooling: str = field(default="mean", metadata={"help": "'mean' or 'last'"})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, ... (default: CUDA when available)"})
    batch_size: int = field(default=32, metadata={"help": "samples per model call; also the unit of saved progress"})
    save_token_states: bool = field(default=False, metadata={"help": "store per-token states (N, T, H) float16"})
    overwrite: bool = field(default=False, metadata={"help": "re-extract files of OUT_DIR made with other settings "
                                                             "(without it such files are refused, naming the fields)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def check(self) -> None:
        """Every flag, before any work."""
        from hsrl.llm import ExtractionSpec
        from hsrl.llm.models import check_device, check_layers, check_model_available
        from hsrl.llm.spec import POOLINGS

        _check_folders(self)
        if self.pooling not in POOLINGS:
            raise InputError(f"--pooling {self.pooling!r}: expected one of {', '.join(POOLINGS)}")
        check_device(self.device)
        first = list_chunks(self.in_dir)[0]
        if read_meta(first).spec_json is None:  # raw data: one line now, not one failure per file
            raise InputError(f"{self.in_dir} is not labelled ({first.name} has no extraction spec): `hsrl extract` "
                             f"re-extracts labelled data; run `hsrl label {self.in_dir} OUT_DIR` first")
        model = ExtractionSpec.from_json(read_meta(first).spec_json).model
        check_model_available(model)
        check_layers(model, (self.layer,))

    def requested_spec(self, meta: ChunkMeta):
        """The spec this re-extraction asks for a file of IN_DIR: its producer's, with this layer and pooling."""
        from hsrl.llm import ExtractionSpec

        if meta.spec_json is None:
            raise DataFileError(None, "meta", "not labelled (no extraction spec): run `hsrl label` first")
        return ExtractionSpec.from_json(meta.spec_json).replace(layer=self.layer, pooling=self.pooling)


def extract_dataset(config: ExtractConfig) -> LabelSummary:
    def make(meta: ChunkMeta):
        from hsrl.llm import ExtractionSpec, make_extractor

        spec = config.requested_spec(meta)
        source = ExtractionSpec.from_json(meta.spec_json)
        extractor = make_extractor(spec, cache=config.state_cache(), device=config.device,
                                   batch_size=config.batch_size)
        mode = "reextract" if source.generates else "label"
        return Labeller(extractor, config.batch_size, config.save_token_states, mode=mode)

    return _label_folder(config.in_dir, config.out_dir, make, config, "extract", config.requested_spec)


def run_extract(config: ExtractConfig) -> int:
    summary = extract_dataset(config)
    print(summary.report())
    return 1 if summary.failed else 0
