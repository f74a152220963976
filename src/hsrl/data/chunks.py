"""Trajectory chunk files: the schema, validated writes and reads of one chunk, the folder of chunks.

Atomic writes are `hsrl.atomic`; loading a whole dataset (and its cache) is `hsrl.data.dataset`.

A chunk is one compressed `.npz` file (`np.savez_compressed`) holding `num_steps * num_envs` rows in
time-major order, `row = t * num_envs + env`, so `x.reshape(num_steps, num_envs, ...)` gives the
`(T, num_envs)` view. A dataset is a folder of chunks named `chunk_000000.npz`, `chunk_000001.npz`, ...;
the index order is time order (chunk i+1 continues every environment of chunk i), within a segment (below).

Keys (`KEYS` says the same, and is what the reader accepts):

    obs, next_obs     (N, H, W, 3) uint8 pixels, or (N, D) float32 symbolic vectors
    next_obs_known    (N,) bool, optional: False where next_obs could not be known (imported data, see
                      `hsrl.data.importer`: the terminal observation of an auto-reset env, or the last step before
                      a gap or the end); those rows of next_obs hold zeros. Absent: every row is known.
    action            (N,) integer (written as int32)
    reward            (N,) float32
    done              (N,) bool: the episode ended with this transition
    log_prob          (N,) float32, optional: log-probability of the action under the behaviour policy
    text_obs          (N,) fixed-width unicode, optional: the observation rendered by hsrl.text
    text_generated    (N, W) int32, optional: text the LLM generated when labelling, as Unicode code points
                      padded with -1 (numpy's unicode arrays drop trailing NUL characters; this keeps every
                      text exactly). Readers give a (N,) object array of str; files of earlier hsrl versions
                      hold (N,) fixed-width unicode, also read.
    generated_ids     (N, G) int32, with generated_len: the generated token ids, -1 after generated_len[row]
    generated_len     (N,) int32, with generated_ids: generated tokens per row (what `hsrl extract` pools)
    hidden_state      (N, H) pooled or (N, T, H) per-token, float16 or float32, optional
    hidden_tokens     (N,) int32, with per-token hidden_state: valid tokens per row (the rest is zero padding)
    return_to_go      (N,) float32, optional: discounted return to the end of the episode (`hsrl returns`)
    return_truncated  (N,) bool, with return_to_go: the episode was still running at the end of the data
    achievements      (N, A) bool, optional: at a `done` row, the achievements that episode unlocked;
                      all False elsewhere; names in meta `achievement_names`
    meta              0-d fixed-width unicode: the JSON of `ChunkMeta`

Every array is stored with a plain dtype and every read uses `allow_pickle=False`: a data file never
executes code. Writes go to a temporary file in the same folder, are fsynced and renamed into place, so
a crash never leaves a half-written file under a final name. Reads validate keys, shapes and dtypes from
the array headers before decompressing any data, read each requested member to its end (so the zip
CRC is checked) and raise `DataFileError` naming the file and the field.

Segments. A recording may have gaps (imported data whose saved batches skip indices). `ChunkMeta.segment`
numbers the contiguous runs: chunks of one segment follow on; a chunk whose segment is higher than the previous
file's starts after a gap, and no episode continues across it: `hsrl returns` marks the episodes still running at
a segment's end as truncated (`return_truncated`), as at the end of the data, and `hsrl stats` ends them there.
`segment_start_rows` marks a segment's first rows in the concatenated time-major rows, and `episode_starts` makes
them episode starts for every schedule that walks rows across files (the --hidden-skip-n refresh, history windows,
probes' episodes); `episode_remaining` ends the steps a future window (hindsight labels) reaches before them.

Values are checked where they enter, block by block as they are read (`value_check`): `action` must be an
integer in [0, num_actions) of the file's env, and the float keys (`FINITE_KEYS`: observations, reward,
hidden_state, return_to_go) must be finite. The error names the file, the field and the first bad row.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hsrl.atomic import atomic_path  # noqa: F401
from hsrl.errors import InputError
from hsrl.env.catalog import ENV_NAMES
from hsrl.llm.spec import spec_hash
from hsrl.pixels import pixels_to_uint8, uint8_to_pixels  # noqa: F401  (re-exported by hsrl.data)
from hsrl.strict import dataclass_kwargs

SCHEMA_VERSION = 1
ROW_LAYOUT = "time-major: row = t * num_envs + env"
META_KEY = "meta"
CHUNK_PATTERN = re.compile(r"^chunk_(\d+)\.npz$")
OBS_KINDS = ("pixels", "symbolic")

KEYS: dict[str, str] = {
    "obs": "(N, H, W, 3) uint8 pixels or (N, D) float32 symbolic observation before the action",
    "next_obs": "same shape and dtype as obs: the observation after the action",
    "next_obs_known": "(N,) bool: False where next_obs could not be known (imported data; those rows hold zeros)",
    "action": "(N,) integer action",
    "reward": "(N,) float32 reward",
    "done": "(N,) bool: the episode ended with this transition",
    "log_prob": "(N,) float32 log-probability of the action under the behaviour policy",
    "text_obs": "(N,) unicode observation text rendered by hsrl.text",
    "text_generated": "(N, W) int32 Unicode code points padded with -1: text generated by the LLM while labelling",
    "generated_ids": "(N, G) int32 generated token ids, padded with -1 after generated_len",
    "generated_len": "(N,) int32 number of generated tokens per row",
    "hidden_state": "(N, H) pooled or (N, T, H) per-token hidden states, float16 or float32",
    "hidden_tokens": "(N,) int32: valid tokens per row of a per-token hidden_state (the rest is zero padding)",
    "return_to_go": "(N,) float32 discounted return to the end of the episode",
    "return_truncated": "(N,) bool: return_to_go is of an episode still running at the end of the data",
    "achievements": "(N, A) bool: at a done row, the achievements unlocked in that episode",
}
REQUIRED_KEYS = ("obs", "next_obs", "action", "reward", "done")
FINITE_KEYS = ("obs", "next_obs", "reward", "hidden_state", "return_to_go")  # float keys refused when NaN or infinite
TEXT_KEYS = ("text_obs", "text_generated")
CODE_POINT_KEYS = ("text_generated",)  # text that may end in NUL characters: stored by `encode_text`
PIXEL_ROUNDTRIP_MAX_ERROR = 0.5 / 255  # see pixels_to_uint8


class DataFileError(InputError):
    """A data file that is missing a key, has a wrong shape or dtype, or is corrupt. Names file and field."""

    def __init__(self, path: str | os.PathLike | None, field: str | None, problem: str):
        self.path = None if path is None else Path(path)
        self.field = field
        self.problem = problem
        where = str(path) if path is not None else "<arrays>"
        super().__init__(f"{where}: {field}: {problem}" if field else f"{where}: {problem}")


# ------------------------------------------------------------------------------------------- meta


@dataclass(frozen=True)
class ChunkMeta:
    """What a chunk is, stored as JSON under the key `meta`.

    `first_step` is the env step (per environment) of the chunk's first row, used to check that chunks
    are consecutive; `spec_json` is the extraction spec of `hidden_state` once labelled (the stored JSON
    also carries its `spec_hash`, derived, for people reading files);
    `return_gamma` is the discount of `return_to_go`; `extra` is free JSON (seed, policy, ...).
    `segment` numbers the contiguous runs of a recording with gaps (module docstring): 0 for data without gaps.
    """

    env_name: str
    num_envs: int
    obs_kind: str  # "pixels" or "symbolic"
    first_step: int | None = None
    achievement_names: tuple[str, ...] = ()
    spec_json: str | None = None
    return_gamma: float | None = None
    extra: Mapping = field(default_factory=dict)
    segment: int = 0
    schema_version: int = SCHEMA_VERSION
    row_layout: str = ROW_LAYOUT

    def __post_init__(self):
        object.__setattr__(self, "achievement_names", tuple(self.achievement_names))
        problems = []
        if not isinstance(self.env_name, str) or not self.env_name:
            problems.append(f"env_name must be a non-empty string, got {self.env_name!r}")
        if not isinstance(self.num_envs, int) or isinstance(self.num_envs, bool) or self.num_envs < 1:
            problems.append(f"num_envs must be a positive int, got {self.num_envs!r}")
        if self.obs_kind not in OBS_KINDS:
            problems.append(f"obs_kind must be one of {OBS_KINDS}, got {self.obs_kind!r}")
        if self.first_step is not None and (not isinstance(self.first_step, int) or self.first_step < 0):
            problems.append(f"first_step must be a non-negative int or null, got {self.first_step!r}")
        if not all(isinstance(n, str) for n in self.achievement_names):
            problems.append("achievement_names must be strings")
        if self.spec_json is not None:
            try:
                if not isinstance(json.loads(self.spec_json), dict):
                    problems.append("spec_json must be a JSON object")
            except (TypeError, json.JSONDecodeError) as err:
                problems.append(f"spec_json is not valid JSON ({err})")
        if not isinstance(self.segment, int) or isinstance(self.segment, bool) or self.segment < 0:
            problems.append(f"segment must be a non-negative int, got {self.segment!r}")
        if self.return_gamma is not None and not (0.0 <= float(self.return_gamma) <= 1.0):
            problems.append(f"return_gamma must lie in [0, 1], got {self.return_gamma!r}")
        if self.schema_version != SCHEMA_VERSION:
            problems.append(f"schema_version {self.schema_version!r} is not supported (this hsrl reads {SCHEMA_VERSION})")
        if self.row_layout != ROW_LAYOUT:
            problems.append(f"row_layout {self.row_layout!r} is not {ROW_LAYOUT!r}")
        try:
            json.dumps(dict(self.extra))
        except (TypeError, ValueError) as err:
            problems.append(f"extra must be a JSON-serialisable mapping ({err})")
        if problems:
            raise ValueError("; ".join(problems))

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["achievement_names"] = list(self.achievement_names)
        d["extra"] = dict(self.extra)
        d["spec_hash"] = self.spec_hash
        if not self.segment:  # data without gaps is stored as before segments existed
            del d["segment"]
        return json.dumps(d, sort_keys=True)

    @property
    def spec_hash(self) -> str | None:
        return None if self.spec_json is None else spec_hash(self.spec_json)

    @classmethod
    def from_json(cls, text: str, path: str | os.PathLike | None = None) -> ChunkMeta:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataFileError(path, META_KEY, f"not valid JSON ({err})") from None
        if not isinstance(d, dict):
            raise DataFileError(path, META_KEY, "not a JSON object")
        try:
            return cls.from_dict(d)
        except (TypeError, ValueError) as err:
            raise DataFileError(path, META_KEY, str(err)) from None

    @classmethod
    def from_dict(cls, d: Mapping) -> ChunkMeta:
        """The meta of a stored dict; raises ValueError naming unknown or missing fields, or a wrong spec_hash."""
        meta = cls(**dataclass_kwargs(cls, d, derived=("spec_hash",)))
        if d.get("spec_hash") != meta.spec_hash:
            raise ValueError(f"spec_hash {d.get('spec_hash')!r} does not match spec_json ({meta.spec_hash!r})")
        return meta

    def num_steps(self, num_rows: int) -> int:
        return num_rows // self.num_envs


# ------------------------------------------------------------------------------------------- text


def encode_text(texts: Iterable[str]) -> np.ndarray:
    """Texts -> (N, W) int32 Unicode code points padded with -1, W the longest text's length.

    Unlike numpy's fixed-width unicode, which drops trailing NUL characters, this keeps every text exactly
    (`decode_text` gives it back) and still loads with `allow_pickle=False`.
    """
    texts = [t if isinstance(t, str) else _not_str(t) for t in (texts.tolist() if isinstance(texts, np.ndarray)
                                                                 else texts)]
    out = np.full((len(texts), max(map(len, texts), default=0)), -1, dtype=np.int32)
    for i, t in enumerate(texts):
        out[i, : len(t)] = np.frombuffer(t.encode("utf-32-le", "surrogatepass"), dtype="<u4")
    return out


def _not_str(value):
    raise ValueError(f"expected strings, got {type(value).__name__}")


def decode_text(points: np.ndarray) -> np.ndarray:
    """(N, W) code points padded with -1 (`encode_text`) -> (N,) object array of str.

    (N,) fixed-width unicode (files of earlier hsrl versions) is accepted too. Raises ValueError on values that
    are not code points or padding that is not trailing.
    """
    points = np.asarray(points)
    if points.ndim == 1 and points.dtype.kind == "U":
        return points.astype(object)
    if points.ndim != 2 or points.dtype.kind not in "iu":
        raise ValueError(f"expected (N, W) integer code points, got {points.shape} {points.dtype}")
    valid = points >= 0
    lengths = valid.sum(axis=1)
    if (valid != (np.arange(points.shape[1]) < lengths[:, None])).any() or (points > 0x10FFFF).any():
        raise ValueError("not Unicode code points padded with -1 at the end")
    units = points.astype("<u4")
    out = np.empty(len(points), dtype=object)
    for i, n in enumerate(lengths):
        out[i] = units[i, :n].tobytes().decode("utf-32-le", "surrogatepass")
    return out


# ------------------------------------------------------------------------------------- validation

Field = tuple[tuple[int, ...], np.dtype]  # (shape, dtype) of one stored array


def validate_fields(fields: Mapping[str, Field], meta: ChunkMeta, path=None) -> int:
    """Check keys, shapes and dtypes of a chunk's arrays; return the row count N.

    `fields` maps key -> (shape, dtype), from array headers or arrays in memory.
    """

    def fail(key, problem):
        raise DataFileError(path, key, problem)

    unknown = sorted(set(fields) - set(KEYS))
    if unknown:
        fail(unknown[0], f"unknown key (known keys: {', '.join(KEYS)})")
    for key in REQUIRED_KEYS:
        if key not in fields:
            fail(key, "missing required key")
    n = None
    for key, (shape, dtype) in fields.items():
        if dtype.hasobject or dtype.kind == "V":
            fail(key, f"dtype {dtype} is not a plain numeric, bool or unicode dtype")
        if len(shape) == 0:
            fail(key, "is a scalar; expected one row per sample")
        if n is None:
            n, first = shape[0], key
        elif shape[0] != n:
            fail(key, f"has {shape[0]} rows but {first} has {n}")
    if n is None:
        return 0
    if n % meta.num_envs:
        fail(next(iter(fields)), f"{n} rows is not a multiple of num_envs={meta.num_envs}")

    def expect(key, ndims, dtypes, what):
        if key not in fields:
            return
        shape, dtype = fields[key]
        if len(shape) not in ndims:
            fail(key, f"shape {shape}; expected {what}")
        if not any(dtype == d if isinstance(d, np.dtype) else dtype.kind == d for d in dtypes):
            fail(key, f"dtype {dtype}; expected {what}")

    f32, f16, u8, b = np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.uint8), np.dtype(bool)
    if meta.obs_kind == "pixels":
        expect("obs", (4,), (u8,), "(N, H, W, C) uint8 pixels (convert with pixels_to_uint8)")
    else:
        expect("obs", (2,), (f32,), "(N, D) float32 symbolic observations")
    if "obs" in fields and meta.env_name in ENV_NAMES:  # the env's own shape, e.g. 1345 for Craftax-Classic
        from hsrl.env import env_info

        want = env_info(meta.env_name).obs_shape
        if fields["obs"][0][1:] != want:
            fail("obs", f"rows of shape {fields['obs'][0][1:]}, but {meta.env_name} observations are {want}")
    if "obs" in fields and "next_obs" in fields and fields["obs"] != fields["next_obs"]:
        fail("next_obs", f"shape {fields['next_obs'][0]} dtype {fields['next_obs'][1]} differs from obs "
                         f"{fields['obs'][0]} {fields['obs'][1]}")
    if "next_obs" in fields and "obs" not in fields:
        expect("next_obs", (4,) if meta.obs_kind == "pixels" else (2,), (u8,) if meta.obs_kind == "pixels" else (f32,),
               "the shape and dtype of obs")
    expect("action", (1,), ("i", "u"), "(N,) integer")
    expect("hidden_tokens", (1,), ("i",), "(N,) integer token counts")
    for key in ("reward", "log_prob", "return_to_go"):
        expect(key, (1,), (f32,), "(N,) float32")
    for key in ("done", "return_truncated", "next_obs_known"):
        expect(key, (1,), (b,), "(N,) bool")
    for key in TEXT_KEYS:
        if key in CODE_POINT_KEYS and key in fields and len(fields[key][0]) == 2:
            expect(key, (2,), (np.dtype(np.int32),), "(N, W) int32 code points")
        else:
            expect(key, (1,), ("U",), "(N,) fixed-width unicode")
    expect("hidden_state", (2, 3), (f16, f32), "(N, H) or (N, T, H) float16/float32")
    expect("achievements", (2,), (b,), "(N, A) bool")
    if "achievements" in fields and fields["achievements"][0][1] != len(meta.achievement_names):
        fail("achievements", f"{fields['achievements'][0][1]} columns but meta has "
                             f"{len(meta.achievement_names)} achievement_names")
    # generated token ids (hsrl extract pools these, never a re-tokenisation of text_generated)
    expect("generated_ids", (2,), ("i",), "(N, G) integer token ids")
    expect("generated_len", (1,), ("i",), "(N,) integer token counts")
    if ("generated_ids" in fields) != ("generated_len" in fields):
        fail("generated_len" if "generated_ids" in fields else "generated_ids",
             "generated_ids and generated_len must be stored together")
    if ("return_to_go" in fields) != ("return_truncated" in fields):
        fail("return_truncated" if "return_to_go" in fields else "return_to_go",
             "return_to_go and return_truncated must be stored together")
    return n


# ------------------------------------------------------------------------------------------ write

_CANONICAL = {"reward": np.float32, "log_prob": np.float32, "return_to_go": np.float32}


def _coerce(key: str, value, meta: ChunkMeta) -> np.ndarray:
    """The array as stored: C-contiguous, canonical dtype where the conversion loses nothing that matters."""
    if key in CODE_POINT_KEYS and isinstance(value, (list, tuple)):
        value = np.array(value, dtype=object)  # np.asarray would make fixed-width unicode, dropping trailing NULs
    x = np.asarray(value)
    if key in ("obs", "next_obs") and meta.obs_kind == "pixels" and x.dtype.kind == "f":
        x = pixels_to_uint8(x)
    elif key in ("obs", "next_obs") and meta.obs_kind == "symbolic" and x.dtype.kind == "f":
        x = x.astype(np.float32, copy=False)
    elif key == "action" and x.dtype.kind in "iu" and x.dtype != np.int32:
        if x.size and (x.min() < np.iinfo(np.int32).min or x.max() > np.iinfo(np.int32).max):
            raise DataFileError(None, key, "values do not fit int32")
        x = x.astype(np.int32)
    elif key in _CANONICAL and x.dtype.kind == "f":
        x = x.astype(_CANONICAL[key], copy=False)
    elif key == "hidden_state" and x.dtype == np.float64:
        x = x.astype(np.float32)
    elif key in CODE_POINT_KEYS and x.dtype.kind in "USO" and x.ndim == 1:
        x = encode_text(x)
    elif key in TEXT_KEYS and x.dtype == object:
        if not all(isinstance(s, str) for s in x.ravel()):
            raise DataFileError(None, key, "object array holds non-strings")
        x = np.asarray(x.tolist(), dtype=str) if x.size else np.zeros(x.shape, dtype="<U1")
    return np.require(x, requirements="C")  # keeps 0-d arrays 0-d, so the validator sees them



def write_chunk(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], meta: ChunkMeta) -> Path:
    """Validate and atomically write one compressed chunk. Returns the path.

    Float pixel observations are converted with `pixels_to_uint8`; float rewards/log-probs/returns to
    float32, integer actions to int32, float64 hidden states to float32, object arrays of str to unicode.
    Anything else that does not match the schema raises `DataFileError` and nothing is written.
    """
    path = Path(path)
    if META_KEY in arrays:
        raise DataFileError(path, META_KEY, "pass metadata as `meta`, not as an array")
    stored = {}
    for key, value in arrays.items():
        try:
            stored[key] = _coerce(key, value, meta)
        except DataFileError as err:
            raise DataFileError(path, key, err.problem) from None
        except ValueError as err:
            raise DataFileError(path, key, str(err)) from None
    validate_fields({k: (v.shape, v.dtype) for k, v in stored.items()}, meta, path)
    stored[META_KEY] = np.array(meta.to_json())
    with atomic_path(path) as f:
        np.savez_compressed(f, allow_pickle=False, **stored)
    return path


def write_chunk_streamed(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], meta: ChunkMeta,
                         streamed: Mapping[str, tuple[tuple[int, ...], np.dtype, Iterable[np.ndarray]]]) -> Path:
    """`write_chunk`, plus arrays too large to hold in memory, written block by block.

    `streamed` maps key -> (full shape, dtype, iterable of row blocks in order); e.g. per-token hidden
    states of a whole chunk (8192 rows x 256 tokens x 2560 in float16 is ~10.7 GB) go to disk one labelling
    batch at a time. The blocks must add up to exactly the full shape, else nothing is written.
    """
    path = Path(path)
    stored = {}
    for key, value in arrays.items():
        try:
            stored[key] = _coerce(key, value, meta)
        except (DataFileError, ValueError) as err:
            raise DataFileError(path, key, getattr(err, "problem", str(err))) from None
    fields = {k: (v.shape, v.dtype) for k, v in stored.items()}
    fields.update({k: (tuple(shape), np.dtype(dtype)) for k, (shape, dtype, _) in streamed.items()})
    validate_fields(fields, meta, path)
    with atomic_path(path) as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        for key, value in {**stored, META_KEY: np.array(meta.to_json())}.items():
            with zf.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, value, allow_pickle=False)
        for key, (shape, dtype, blocks) in streamed.items():
            dtype = np.dtype(dtype)
            with zf.open(f"{key}.npy", "w", force_zip64=True) as member:
                header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
                np.lib.format.write_array_header_2_0(member, header)
                rows = 0
                for block in blocks:
                    block = np.ascontiguousarray(block, dtype=dtype)
                    if block.shape[1:] != tuple(shape[1:]):
                        raise DataFileError(path, key, f"block of shape {block.shape} does not fit {tuple(shape)}")
                    member.write(block.tobytes())
                    rows += len(block)
                if rows != shape[0]:
                    raise DataFileError(path, key, f"blocks gave {rows} rows; expected {shape[0]}")
    return path


# ----------------------------------------------------------------------------------------- values


def value_check(key: str, meta: ChunkMeta, path=None) -> Callable[[np.ndarray, int], None] | None:
    """The check of `key`'s values, applied to each block of stored rows as it is read: `check(block, first_row)`
    raises `DataFileError` naming the file, the field and the first bad row. `action`: integers in
    [0, num_actions) of the file's env; `FINITE_KEYS` (float dtypes): finite. None for keys without a check.

    Cheap: one min/max pass per block; the bad row is looked for only when the block fails."""
    if key == "action" and meta.env_name in ENV_NAMES:
        from hsrl.env import env_info

        num_actions = env_info(meta.env_name).num_actions

        def check_action(block: np.ndarray, start: int) -> None:
            if block.size and (block.min() < 0 or block.max() >= num_actions):
                row = int(np.flatnonzero((block < 0) | (block >= num_actions))[0])
                raise DataFileError(path, key, f"row {start + row} holds {block[row]}, outside the "
                                               f"{num_actions} actions (0 to {num_actions - 1}) of {meta.env_name}")
        return check_action
    if key in FINITE_KEYS:
        def check_finite(block: np.ndarray, start: int) -> None:
            if block.dtype.kind != "f" or not block.size:
                return
            with np.errstate(invalid="ignore", over="ignore"):
                if np.isfinite(block.min()) and np.isfinite(block.max()):
                    return
            bad = ~np.isfinite(block.reshape(len(block), -1))
            row = int(np.flatnonzero(bad.any(axis=1))[0])
            value = block.reshape(len(block), -1)[row][bad[row]][0]
            raise DataFileError(path, key, f"row {start + row} holds {value} (NaN or infinite values are refused)")
        return check_finite
    return None


def check_values(arrays: Mapping[str, np.ndarray], meta: ChunkMeta, path=None) -> None:
    """`value_check` of every key of arrays in memory (whole arrays: one block each)."""
    for key, value in arrays.items():
        check = value_check(key, meta, path)
        if check is not None:
            check(np.asarray(value), 0)


# ------------------------------------------------------------------------------------------- read

_CORRUPT = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError, RuntimeError)
_BLOCK_BYTES = 1 << 20  # decompression step: 1 MiB


def _corrupt(path, member, err) -> DataFileError:
    return DataFileError(path, member, f"corrupt or truncated file ({type(err).__name__}: {err})")


def npy_header(f) -> tuple[tuple[int, ...], np.dtype, bool]:
    """(shape, dtype, fortran order) from an .npy member's header; the header is a literal, so nothing is
    unpickled. ValueError for a format version numpy's reader does not know."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    return tuple(int(d) for d in shape), np.dtype(dtype), bool(fortran)


def _read_header(f, path, key) -> Field:
    try:
        shape, dtype, fortran = npy_header(f)
    except ValueError as err:
        raise DataFileError(path, key, str(err)) from None
    if fortran and len(shape) > 1:
        raise DataFileError(path, key, "stored in Fortran order; hsrl writes and reads C order only")
    if dtype.hasobject:
        raise DataFileError(path, key, f"object dtype {dtype}: refusing to unpickle")
    return tuple(int(d) for d in shape), dtype


def _read_exact(f, buffer: np.ndarray) -> None:
    """Fill a C-contiguous array from a zip member stream, in bounded steps."""
    view = memoryview(buffer.reshape(-1).view(np.uint8))
    pos, total = 0, len(view)
    while pos < total:
        got = f.readinto(view[pos:min(total, pos + _BLOCK_BYTES)])
        if not got:
            raise EOFError(f"member ended after {pos} of {total} bytes")
        pos += got


def _finish(f) -> None:
    """Reading to the member's end makes zipfile check the CRC; trailing bytes mean a malformed member."""
    if f.read(1):
        raise ValueError("trailing bytes after the array data")


class _CallerError(Exception):
    """Carries an exception raised by a caller's `transform`, so it is not reported as a corrupt file."""


def _read_into(f, shape, dtype, out: np.ndarray | None, transform: Callable | None = None,
               block_bytes: int | None = None, check: Callable | None = None) -> None:
    """Read a member's array data (header consumed) into `out` (len(out) == shape[0] after `transform`).

    Same dtype and no transform: decompress straight into `out`. Otherwise go through row blocks of
    at most `block_bytes` (default `_BLOCK_BYTES`; at least one row), so peak memory is `out` plus one block;
    `transform` gets the blocks in row order. `check(block, first_row)` (`value_check`) sees the stored values
    before anything is done with them; `out=None` only checks (nothing kept).
    """
    if out is not None and transform is None and out.dtype == dtype and out.flags.c_contiguous and out.shape == shape:
        _read_exact(f, out)
        if check is not None:
            check(out, 0)
    else:
        row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize)
        step = max(1, (block_bytes or _BLOCK_BYTES) // row_bytes)
        for start in range(0, shape[0], step):
            block = np.empty((min(step, shape[0] - start),) + tuple(shape[1:]), dtype)
            _read_exact(f, block)
            if check is not None:
                check(block, start)
            if out is None:
                continue
            try:
                out[start:start + len(block)] = block if transform is None else transform(block)
            except Exception as err:
                raise _CallerError from err
    _finish(f)


@dataclass(frozen=True)
class ChunkInfo:
    """A chunk's metadata and the (shape, dtype) of each array, read from headers only."""

    path: Path
    meta: ChunkMeta
    fields: dict[str, Field]
    num_rows: int

    @property
    def num_steps(self) -> int:
        return self.num_rows // self.meta.num_envs


class ChunkReader:
    """An open chunk: validated headers; members read on demand, each to its end."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self.zip = zipfile.ZipFile(self.path)
        except FileNotFoundError:
            raise
        except _CORRUPT as err:
            raise _corrupt(self.path, None, err) from None
        try:
            self.info = self._inspect()
        except BaseException:
            self.zip.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.zip.close()

    def _members(self) -> dict[str, str]:
        members = {}
        for name in self.zip.namelist():
            if not name.endswith(".npy"):
                raise DataFileError(self.path, name, "unexpected member (not an .npy array)")
            members[name[:-4]] = name
        return members

    def _inspect(self) -> ChunkInfo:
        members = self._members()
        if META_KEY not in members:
            raise DataFileError(self.path, META_KEY, "missing (not an hsrl chunk file?)")
        fields = {}
        for key in members:
            try:
                with self.zip.open(members[key]) as f:
                    fields[key] = _read_header(f, self.path, key)
                    header_bytes = f.tell()
            except DataFileError:
                raise
            except _CORRUPT as err:
                raise _corrupt(self.path, key, err) from None
            shape, dtype = fields[key]
            declared = int(np.prod(shape, dtype=object)) * dtype.itemsize  # Python ints: no overflow
            stored = self.zip.getinfo(members[key]).file_size - header_bytes
            if declared != stored:  # checked before anything is allocated for it
                raise DataFileError(self.path, key, f"header declares shape {shape} {dtype} ({declared} bytes) but "
                                                    f"the file holds {stored} bytes for it: corrupt or tampered")
        meta_shape, meta_dtype = fields.pop(META_KEY)
        if meta_shape != () or meta_dtype.kind != "U":
            raise DataFileError(self.path, META_KEY, f"expected a 0-d unicode string, got {meta_shape} {meta_dtype}")
        meta = ChunkMeta.from_json(str(self._read(META_KEY, (meta_shape, meta_dtype))[()]), self.path)
        n = validate_fields(fields, meta, self.path)
        return ChunkInfo(self.path, meta, fields, n)

    def _read(self, key: str, field: Field, out: np.ndarray | None = None, transform=None,
              block_bytes: int | None = None, check_only: bool = False) -> np.ndarray | None:
        shape, dtype = field
        if out is None and not check_only:
            out = np.empty(shape, dtype)
        check = None if key == META_KEY else value_check(key, self.info.meta, self.path)
        try:
            with self.zip.open(key + ".npy") as f:
                if _read_header(f, self.path, key) != (shape, dtype):
                    raise ValueError("header changed while reading")
                _read_into(f, shape, dtype, out, transform, block_bytes, check)
        except _CallerError as err:
            raise err.__cause__ from None
        except DataFileError:
            raise
        except _CORRUPT as err:
            raise _corrupt(self.path, key, err) from None
        return out

    def read(self, key: str, out: np.ndarray | None = None, transform=None, block_bytes: int | None = None) -> np.ndarray:
        """The array `key` (into `out` if given). `transform` maps each block of rows (at most `block_bytes` of stored
        data, at least one row) to the rows of `out`, in order, while reading."""
        if key not in self.info.fields:
            raise DataFileError(self.path, key, "missing")
        return self._read(key, self.info.fields[key], out, transform, block_bytes)

    def check_values(self, keys: Iterable[str] | None = None) -> None:
        """Read `keys` (default: every key with a `value_check`) block by block only to check their values; nothing
        is kept (one block in memory). Raises `DataFileError` naming the field and the first bad row."""
        wanted = [k for k in self.info.fields if value_check(k, self.info.meta) is not None] if keys is None else keys
        for key in wanted:
            if key not in self.info.fields:
                raise DataFileError(self.path, key, "missing")
            self._read(key, self.info.fields[key], check_only=True)

    def read_text(self, key: str) -> np.ndarray:
        """A text key stored as code points (`CODE_POINT_KEYS`), decoded: (N,) object array of str."""
        try:
            return decode_text(self.read(key))
        except ValueError as err:
            if isinstance(err, DataFileError):
                raise
            raise DataFileError(self.path, key, str(err)) from None


@dataclass(frozen=True)
class Chunk:
    """One chunk read into memory: `chunk["reward"]`, `chunk.meta`, `chunk.time_major("reward")`."""

    path: Path | None
    meta: ChunkMeta
    arrays: dict[str, np.ndarray]

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]

    def __contains__(self, key: str) -> bool:
        return key in self.arrays

    @property
    def num_rows(self) -> int:
        return len(next(iter(self.arrays.values()))) if self.arrays else 0

    @property
    def num_steps(self) -> int:
        return self.num_rows // self.meta.num_envs

    def time_major(self, key: str) -> np.ndarray:
        """The array as (T, num_envs, ...)."""
        return to_time_env(self.arrays[key], self.meta.num_envs)


def to_time_env(x: np.ndarray, num_envs: int) -> np.ndarray:
    """(N, ...) time-major rows -> (T, num_envs, ...) view."""
    return x.reshape((x.shape[0] // num_envs, num_envs) + x.shape[1:])


def inspect_chunk(path: str | os.PathLike) -> ChunkInfo:
    """Metadata and validated (shape, dtype) of every array, decompressing only the headers."""
    with ChunkReader(path) as r:
        return r.info


def read_meta(path: str | os.PathLike) -> ChunkMeta:
    return inspect_chunk(path).meta


def check_chunk_values(path: str | os.PathLike, keys: Iterable[str] | None = None) -> ChunkInfo:
    """Check the values of a chunk's `keys` (default: every checked key, `value_check`) without keeping them;
    returns its info. `DataFileError` names the file, the field and the first bad row."""
    with ChunkReader(path) as r:
        r.check_values(keys)
        return r.info


def read_chunk(path: str | os.PathLike, keys: Iterable[str] | None = None) -> Chunk:
    """Read and validate a chunk: all keys, or only `keys` (each must be present; all headers are checked)."""
    with ChunkReader(path) as r:
        wanted = list(r.info.fields) if keys is None else list(keys)
        return Chunk(r.path, r.info.meta, {k: r.read_text(k) if k in CODE_POINT_KEYS else r.read(k) for k in wanted})


def update_chunk(path: str | os.PathLike, arrays: Mapping[str, np.ndarray] | None = None, *,
                 meta: ChunkMeta | None = None, drop: Iterable[str] = ()) -> Chunk:
    """Add or replace keys (and optionally the meta) of a chunk, keeping the others; rewrites atomically.

    E.g. a labeller: `update_chunk(p, {"hidden_state": h}, meta=dataclasses.replace(m, spec_json=s))`.
    """
    chunk = read_chunk(path)
    merged = {k: v for k, v in chunk.arrays.items() if k not in set(drop)}
    merged.update(arrays or {})
    new_meta = meta or chunk.meta
    write_chunk(path, merged, new_meta)
    return Chunk(Path(path), new_meta, merged)


# ---------------------------------------------------------------------------------------- folders


def chunk_path(directory: str | os.PathLike, index: int) -> Path:
    """The file name of chunk `index` in a dataset folder: DIR/chunk_000042.npz."""
    return Path(directory) / f"chunk_{index:06d}.npz"


def list_chunks(directory: str | os.PathLike) -> list[Path]:
    """A dataset folder's chunk files in time (index) order; other files are ignored."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such folder")
    found = {}
    for p in directory.iterdir():
        m = CHUNK_PATTERN.match(p.name)
        if m:
            i = int(m.group(1))
            if i in found:
                raise DataFileError(p, None, f"chunk index {i} also used by {found[i].name}")
            found[i] = p
    if not found:
        raise DataFileError(directory, None, "no chunk files (chunk_NNNNNN.npz) in this folder")
    return [found[i] for i in sorted(found)]


def check_same_row_shape(infos: Sequence[ChunkInfo], key: str) -> None:
    """Every file's `key` rows have the first file's shape (the hidden width, the observation shape); the error
    names the first file that differs."""
    first = infos[0]
    want = first.fields[key][0][1:]
    for info in infos[1:]:
        got = info.fields[key][0][1:]
        if got != want and not (key == "hidden_state" and got[-1:] == want[-1:]):  # (T, H) vs (H,): same width
            raise DataFileError(info.path, key, f"rows of shape {got}, but {first.path.name} has {want}")


def check_consecutive(infos: Sequence[ChunkInfo]) -> None:
    """Chunks of one run in time order: same env, num_envs and obs kind, `first_step`s that follow on within a
    segment, and segments that never go back (a higher segment starts after a gap: see the module docstring)."""
    for prev, cur in zip(infos, infos[1:]):
        for name in ("env_name", "num_envs", "obs_kind"):
            if getattr(prev.meta, name) != getattr(cur.meta, name):
                raise DataFileError(cur.path, META_KEY, f"{name} {getattr(cur.meta, name)!r} differs from "
                                                        f"{getattr(prev.meta, name)!r} in {prev.path.name}")
        if cur.meta.segment < prev.meta.segment:
            raise DataFileError(cur.path, META_KEY, f"segment {cur.meta.segment} comes after segment "
                                                    f"{prev.meta.segment} of {prev.path.name}: chunks out of order")
        if cur.meta.segment != prev.meta.segment:
            continue  # a gap: nothing follows on
        a, b = prev.meta.first_step, cur.meta.first_step
        if a is not None and b is not None and b != a + prev.num_steps:
            raise DataFileError(cur.path, META_KEY, f"first_step {b} does not follow {prev.path.name} "
                                                    f"(first_step {a} + {prev.num_steps} steps): chunks are not consecutive")


def starts_segment(infos: Sequence[ChunkInfo]) -> list[bool]:
    """Per file in time order: whether it starts a segment (the first file, or a segment number that differs from
    the previous file's), i.e. no episode of the previous file continues into it."""
    return [i == 0 or info.meta.segment != infos[i - 1].meta.segment for i, info in enumerate(infos)]


def segment_start_rows(infos: Sequence[ChunkInfo]) -> np.ndarray:
    """(N,) bool over the time-major rows of `infos` (files in time order, N their rows together, as `load_dataset`
    concatenates them): True at the rows of each segment's first step (`starts_segment`: the data's first step and
    the first step after each gap). Every schedule that walks rows across files (`episode_starts` and its users:
    history windows, the --hidden-skip-n refresh, probes' episodes) treats such a row as an episode's first, and
    returns and stats, which walk file by file, cut their carry at `starts_segment`: nothing carries across a gap."""
    out = np.zeros(sum(info.num_rows for info in infos), bool)
    offset, pending = 0, False
    for info, start in zip(infos, starts_segment(infos)):
        pending |= start
        if pending and info.num_rows:  # a file with no rows passes its segment's start on to the next
            out[offset:offset + info.meta.num_envs] = True
            pending = False
        offset += info.num_rows
    return out


def episode_starts(done: np.ndarray, num_envs: int, segment_start: np.ndarray | None = None) -> np.ndarray:
    """(T, num_envs) bool: where each environment's episode begins in time-major rows (`row = t * num_envs + env`)
    of consecutive steps: the first step, the step after a `done`, and every row of `segment_start` ((N,) bool,
    `segment_start_rows`: the first step after a gap in the recording, where no episode continues)."""
    done = np.asarray(done, bool)
    if done.ndim != 1 or len(done) % num_envs:
        raise ValueError(f"done must be (N,) with N a multiple of num_envs {num_envs}, got shape {done.shape}")
    steps = len(done) // num_envs
    start = np.zeros((steps, num_envs), bool)
    start[:1] = True  # no earlier step is in the data
    start[1:] = done.reshape(steps, num_envs)[:-1]  # the row after an episode's last step begins the next
    if segment_start is not None:
        segment_start = np.asarray(segment_start, bool)
        if segment_start.shape != done.shape:
            raise ValueError(f"segment_start must have done's shape {done.shape}, got {segment_start.shape}")
        start |= segment_start.reshape(steps, num_envs)
    return start


def episode_age(done: np.ndarray, num_envs: int, segment_start: np.ndarray | None = None) -> np.ndarray:
    """(T, num_envs) int64: how many steps each row is into its environment's episode (0 where `episode_starts`
    says one begins), as far as the rows show: the previous steps a history window may reach."""
    start = episode_starts(done, num_envs, segment_start)
    t = np.arange(len(start), dtype=np.int64)[:, None]
    return t - np.maximum.accumulate(np.where(start, t, -1), axis=0)


def episode_remaining(done: np.ndarray, num_envs: int, segment_start: np.ndarray | None = None) -> np.ndarray:
    """(T, num_envs) int64: how many steps after each row its environment's episode goes on, as far as the rows show:
    0 where the row's transition ends the episode (`done`), where the next row begins a segment (`segment_start`, a
    gap in the recording) and at the last step; the next steps a future window (hindsight labels) may reach. Where
    the count stops at a `done` (the episode ends within the rows) is `done` at row t + remaining."""
    done = np.asarray(done, bool)
    start = episode_starts(done, num_envs, segment_start)  # checks the shapes
    end = done.reshape(start.shape).copy()
    end[:-1] |= start[1:]  # the row before an episode's (or a segment's) first step is its last
    end[-1:] = True  # no later step is in the rows
    t = np.arange(len(end), dtype=np.int64)[:, None]
    nxt = np.minimum.accumulate(np.where(end, t, len(end))[::-1], axis=0)[::-1]
    return nxt - t


def progress(items, desc: str, enabled: bool = True, unit: str = "file"):
    """A tqdm bar over `items` on stderr (plain iteration when disabled)."""
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit=unit)
