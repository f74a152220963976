"""`hsrl import SRC DST`: trajectory folders written by other tools (the Craftax_Baselines family of scripts) become
hsrl chunks, verified with hsrl's own reader.

What such a folder holds, and what becomes of it:

    trajectories_batch_NNNNNN.npz   one saved batch each, rows time-major over the run's NUM_ENVS environments
                                    (row = t * num_envs + env, as hsrl's); no metadata. Chunk DST/chunk_NNNNNN.npz
                                    gets the same index, so every chunk names its source.
    obs                             (N, D) float symbolic vectors -> float32; (N, H, W, 3) float pixels in [0, 1]
                                    -> uint8 by `hsrl.pixels.pixels_to_uint8` (rint(x * 255), error <= 0.5/255)
    obs_map_bits + obs_aux          the compact variant (below) -> obs
    next_obs                        kept where present (and checked: where an episode goes on, it must be the next
                                    row's obs, which also checks --num-envs); rebuilt where absent (below)
    action                          float or any integer dtype -> int32, each a whole number in [0, num_actions)
    reward, log_prob                any float -> float32
    done                            uint8, int or float holding only 0 and 1 -> bool
    text_obs, text_generated        object arrays (pickled) or unicode -> unicode / code points; object arrays are
                                    read only with --trust-pickle (unpickling runs whatever code the file holds)
    hidden_state                    (N, H) pooled: kept. (N, T, H) per-token without counts: `hidden_tokens` is
                                    derived from the zero padding (a row's tokens are its positions up to its last
                                    nonzero vector; an all-zero row, or a zero vector before the last nonzero one,
                                    is refused naming the row), streamed block by block, never held whole
    return_to_go, return_truncated  dropped: rerun `hsrl returns DST` (the source's gamma and cut-offs are unknown)
    other keys                      dropped and listed (in the summary and in each chunk's meta)

The compact variant. A symbolic observation is the env's map (view rows x cols x channels, row-major: the one-hot
block planes and mob channels, all 0 or 1; `hsrl.text` documents the layout) followed by its scalars (inventory,
intrinsics, direction, light, ...; 22 floats in Craftax-Classic, 51 in Craftax). Those tools store the map part as
`obs_map_bits` = `np.packbits(map, axis=1, bitorder="little")` (uint8, ceil(M / 8) bytes per row) and the scalars
as `obs_aux` (float16), optionally with scalars `obs_map_dim` (M), `obs_aux_dim`, `obs_dim` and `obs_packed`. hsrl
rebuilds `obs = concat(unpackbits(obs_map_bits, count=M, bitorder="little"), obs_aux)` as float32, with
M = D - obs_aux.shape[1] for the env's length D (checked against `hsrl.text`'s map size and `obs_map_dim`); the
padding bits past M must be 0, and every rebuilt observation must decode with `hsrl.text.decode_symbolic` (one-hot
block planes on every lit tile), so bits packed in another order are refused, never misread. `obs_aux` keeps its
float16 values (0.1 is stored as 0.0999756), as the source saved them. A float `obs_map` (their lossless variant
for maps that are not binary) is concatenated the same way.

What the source does not say, and how it is recorded:

- the number of environments E (each chunk's `num_envs_source` says how it was established): read from next_obs
  where stored (the smallest E for which next_obs of every row whose episode goes on is the obs E rows later;
  --num-envs is checked the same way). Without next_obs (always so for the compact variant), symbolic observations
  tell it by their map views: the view is centred on the player, who moves at most one tile a step, so row t + E's
  view is row t's moved by at most one tile (up to `CHANGED_TILES` tiles changed) wherever the episode goes on,
  while rows of different environments show different places. E is the smallest divisor of the file's rows for
  which at least `CONTINUES` of sampled rows continue so (a multiple of E continues too, a wrong E does not); a
  --num-envs that another E fits is refused naming the file and both shares. Where nothing can tell it (pixels
  without next_obs, or views that continue at no E) --num-envs is required and used unchecked, which the summary
  says in one line;
- next_obs where the source has none: the same env's obs one step later, from the next file where the recording
  continues; where that cannot be known (a done row: the terminal observation was not saved; the last step before
  a gap or the end) the row holds zeros and `next_obs_known` is False. A source next_obs at a done row that equals
  the next row's obs is the next episode's first observation (auto-reset), not the terminal one: unknown too;
- the extraction spec: none. `spec_json` stays null and the chunk's meta marks the states foreign
  (`extra["import"]["hidden_state"]`); a policy trained on them carries no spec, and `hsrl eval` with live states
  then needs the spec named (`--spec`);
- text_obs is the source tool's rendering, not `hsrl.text`'s (recorded in the meta);
- gaps between saved batch indices: each contiguous run of indices is its own segment (`ChunkMeta.segment`), so
  `hsrl returns` truncates the episodes still running at a gap instead of joining returns across it, and
  `first_step` is null (the source records no step numbers).

Checks before any folder is made: the file names, every array's header (no data read, nothing unpickled), object
arrays without --trust-pickle, the observation shape against --env, the row counts against --num-envs, and what DST
already holds. Then each file is converted, written atomically (`hsrl.data.chunks.write_chunk`), read back whole
with `ChunkReader` (every value checked as hsrl's verbs check it), and only then counted done. A rerun skips chunks
made from the same source file with the same settings (a killed run resumes; temporaries are cleared) and refuses a
DST holding anything else, naming the file and what differs.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hsrl.atomic import remove_temporaries
from hsrl.data.chunks import (
    CHUNK_PATTERN, ChunkMeta, ChunkReader, DataFileError, check_consecutive, chunk_path, inspect_chunk,
    npy_header, progress, write_chunk, write_chunk_streamed,
)
from hsrl.env.catalog import ENV_NAMES
from hsrl.errors import InputError

SOURCE_PATTERN = re.compile(r"^trajectories_batch_(\d+)\.npz$")
IMPORT_KEY = "import"  # ChunkMeta.extra key of what the import knows and did
IMPORT_VERSION = 1  # changes whenever the same source would give other chunks
BLOCK_BYTES = 64 << 20  # per-token hidden states are copied this much stored data at a time
FOREIGN_HIDDEN = ("foreign: made by another tool, with no extraction spec; `hsrl eval` of a policy trained on them "
                  "with live states needs the spec named (--spec)")
IMPORTED_TEXT = "the source tool's rendering, not hsrl.text's"  # the import record's text_obs (`hsrl label`)
PICKLE_WHY = ("unpickling runs whatever code the file holds, so hsrl reads object arrays only with --trust-pickle, "
              "for files you made or trust (hsrl's own files hold no pickles)")

OBS_KEYS = ("obs", "obs_map_bits", "obs_map", "obs_aux")
SCALAR_KEYS = ("obs_dim", "obs_map_dim", "obs_aux_dim", "obs_packed")
ROW_KEYS = ("next_obs", "action", "reward", "done", "log_prob", "text_obs", "text_generated", "hidden_state",
            "hidden_tokens")
RECOMPUTED = ("return_to_go", "return_truncated")  # dropped: `hsrl returns` computes them
REQUIRED = ("action", "reward", "done")


@dataclass(frozen=True)
class ImportConfig:
    """Convert a folder of trajectories written by other tools into hsrl chunks.

    Reads SRC/trajectories_batch_NNNNNN.npz (the Craftax_Baselines family of scripts: no metadata, object arrays
    of text, uint8 or float done, float actions, per-token hidden states without counts, float pixels, bit-packed
    maps) and writes DST/chunk_NNNNNN.npz with the same index, checked with hsrl's own reader. What the source does
    not say is recorded: hidden states without an extraction spec are marked foreign, next_obs that cannot be known
    is marked (next_obs_known), gaps between batch indices start new segments so returns never span them. Then run
    `hsrl returns DST`. A rerun resumes. See hsrl.data.importer for every conversion.
    """

    source: str = field(metadata={"positional": True, "help": "folder of trajectories_batch_NNNNNN.npz files"})
    out: str = field(metadata={"positional": True, "help": "output folder of hsrl chunks (made if absent)"})
    env: str = field(default="Craftax-Classic-Symbolic-v1", metadata={
        "help": f"the environment the data was collected in, one of {', '.join(ENV_NAMES)} (checked against the "
                f"observation shape)"})
    num_envs: int | None = field(default=None, metadata={
        "help": "environments the rows interleave (the run's NUM_ENVS; default: read from next_obs, else from the "
                "continuity of symbolic map views; required when neither tells it). Checked against the data where "
                "it can be; a count the data contradicts is refused"})
    trust_pickle: bool = field(default=False, metadata={
        "help": "read object arrays (text_obs / text_generated saved as Python objects): unpickling runs code from "
                "the file, so pass this only for files you made or trust"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar over files"})

    def check(self) -> None:
        """Every flag and every source header, before any folder is made (`plan_import`)."""
        plan_import(self)


# ----------------------------------------------------------------------------------------------- source files


class SourceFile:
    """One source .npz: array headers read without unpickling anything; arrays read whole or in row blocks."""

    def __init__(self, path: Path, index: int):
        self.path, self.index = path, index
        try:
            self.zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as err:
            raise InputError(f"{path}: not a readable .npz file ({type(err).__name__}: {err})") from None
        self.fields: dict[str, tuple[tuple[int, ...], np.dtype, bool]] = {}
        try:
            for name in self.zip.namelist():
                if not name.endswith(".npy"):
                    raise InputError(f"{path}: {name}: unexpected member (not an .npy array)")
                with self.zip.open(name) as f:
                    self.fields[name[:-4]] = npy_header(f)
        except InputError:
            self.zip.close()
            raise
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
            self.zip.close()
            raise InputError(f"{path}: corrupt or truncated file ({type(err).__name__}: {err})") from None

    def close(self) -> None:
        self.zip.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def fail(self, key: str, problem: str) -> InputError:
        return DataFileError(self.path, key, problem)

    def shape(self, key: str) -> tuple[int, ...]:
        return self.fields[key][0]

    def dtype(self, key: str) -> np.dtype:
        return self.fields[key][1]

    def read(self, key: str, trust_pickle: bool = False) -> np.ndarray:
        """The whole array; object arrays only with `trust_pickle` (else an error saying why)."""
        if self.dtype(key).hasobject and not trust_pickle:
            raise self.fail(key, f"object array (stored with pickle): {PICKLE_WHY}")
        try:
            with self.zip.open(key + ".npy") as f:
                return np.lib.format.read_array(f, allow_pickle=bool(trust_pickle))
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
            raise self.fail(key, f"corrupt or truncated ({type(err).__name__}: {err})") from None
        except Exception as err:  # unpickling a trusted file may raise anything
            raise self.fail(key, f"cannot be read ({type(err).__name__}: {err})") from None

    def blocks(self, key: str, rows: int | None = None, block_bytes: int = BLOCK_BYTES) -> Iterator[np.ndarray]:
        """The array's first `rows` rows (default: all) in blocks of at most `block_bytes` (at least one row)."""
        shape, dtype, fortran = self.fields[key]
        if dtype.hasobject or (fortran and len(shape) > 1):
            raise self.fail(key, f"{'object' if dtype.hasobject else 'Fortran-order'} array cannot be read in blocks")
        rows = shape[0] if rows is None else min(rows, shape[0])
        row_bytes = max(1, math.prod(shape[1:]) * dtype.itemsize)
        step = max(1, block_bytes // row_bytes)
        try:
            with self.zip.open(key + ".npy") as f:
                npy_header(f)
                for start in range(0, rows, step):
                    n = min(step, rows - start)
                    data = f.read(n * row_bytes)
                    if len(data) != n * row_bytes:
                        raise EOFError(f"member ended inside row {start + len(data) // row_bytes}")
                    yield np.frombuffer(data, dtype).reshape((n,) + tuple(shape[1:]))
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
            raise self.fail(key, f"corrupt or truncated ({type(err).__name__}: {err})") from None

    def rows(self, key: str, stop: int) -> np.ndarray:
        """The first `stop` rows of a plain array (the next file's first step: nothing more is decompressed)."""
        return np.concatenate(list(self.blocks(key, stop)))


def source_files(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """(batch index, path) of a source folder's trajectories_batch_NNNNNN.npz files, in index order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    found: dict[int, Path] = {}
    for p in folder.iterdir():
        m = SOURCE_PATTERN.match(p.name)
        if m:
            i = int(m.group(1))
            if i in found:
                raise InputError(f"{p}: batch index {i} also used by {found[i].name}")
            found[i] = p
    if not found:
        hsrl_chunks = any(CHUNK_PATTERN.match(p.name) for p in folder.iterdir())
        hint = "; it holds hsrl chunks already (chunk_NNNNNN.npz): no import needed" if hsrl_chunks else ""
        raise InputError(f"{folder}: no trajectories_batch_NNNNNN.npz files{hint}")
    return sorted(found.items())


# --------------------------------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Planned:
    """One source file and the chunk it becomes."""

    index: int  # source batch index = chunk index
    path: Path
    rows: int
    segment: int  # contiguous run of batch indices it belongs to
    next_path: Path | None  # the following file of the same segment (its first step gives the last next_obs)


@dataclass(frozen=True)
class ImportPlan:
    files: tuple[Planned, ...]
    env_name: str
    obs_kind: str
    has_next_obs: bool
    per_token: bool | None  # None: no hidden_state
    dropped: tuple[str, ...]  # source keys not carried over (every file's union)
    pickled: tuple[str, ...]  # object-array keys read (with --trust-pickle)


def plan_import(config: ImportConfig) -> ImportPlan:
    """Check the flags and every source file's headers (nothing decompressed or unpickled); the files in order
    with their segments. Raises InputError naming the file and field of the first problem."""
    from hsrl.env.catalog import check_env_name, env_info

    check_env_name(config.env)
    if config.num_envs is not None and config.num_envs < 1:
        raise InputError(f"--num-envs must be at least 1, got {config.num_envs}")
    src, dst = Path(config.source), Path(config.out)
    found = source_files(src)
    if dst.exists() and not dst.is_dir():
        raise InputError(f"{dst}: exists and is not a folder")
    if dst.resolve() == src.resolve():
        raise InputError(f"{dst}: the output folder must not be the source folder")
    info = env_info(config.env)
    planned, dropped, pickled = [], set(), set()
    has_next, per_token = None, None
    segment = 0
    for k, (index, path) in enumerate(found):
        if k and index != found[k - 1][0] + 1:
            segment += 1
        following = found[k + 1] if k + 1 < len(found) else None
        next_path = following[1] if following is not None and following[0] == index + 1 else None
        with SourceFile(path, index) as sf:
            rows = _check_headers(sf, config, info)
            dropped |= {key for key in sf.fields if key not in OBS_KEYS + SCALAR_KEYS + ROW_KEYS}
            pickled |= {key for key in sf.fields if sf.dtype(key).hasobject and key in ROW_KEYS}
            if has_next is None:
                has_next = "next_obs" in sf.fields
            elif has_next != ("next_obs" in sf.fields):
                raise sf.fail("next_obs", f"{'present' if not has_next else 'missing'} here but "
                                          f"{'missing' if not has_next else 'present'} in {found[0][1].name}")
            layout = None if "hidden_state" not in sf.fields else len(sf.shape("hidden_state")) == 3
            if k and layout != per_token:
                raise sf.fail("hidden_state", f"stored {_layout_name(layout)} here but {_layout_name(per_token)} in "
                                              f"{found[0][1].name}")
            per_token = layout
        planned.append(Planned(index, path, rows, segment, next_path))
    if not has_next and config.num_envs is None and info.pixels:
        raise DataFileError(found[0][1], "next_obs", "missing, so the number of environments the rows interleave "
                                                     "cannot be read from the data: pass --num-envs (the NUM_ENVS of "
                                                     "the run that wrote them)")
    return ImportPlan(tuple(planned), config.env, "pixels" if info.pixels else "symbolic", bool(has_next), per_token,
                      tuple(sorted(dropped)), tuple(sorted(pickled)))


def _layout_name(per_token: bool | None) -> str:
    return {None: "no hidden_state", True: "per-token (N, T, H) hidden states", False: "pooled (N, H) hidden states"}[
        per_token]


def _check_headers(sf: SourceFile, config: ImportConfig, info) -> int:
    """Keys, shapes and dtypes of one source file against the env; the row count."""
    for key in REQUIRED:
        if key not in sf.fields:
            raise sf.fail(key, "missing required key")
    if "obs" not in sf.fields and not ({"obs_map_bits", "obs_map"} & set(sf.fields) and "obs_aux" in sf.fields):
        raise sf.fail("obs", "missing (neither obs nor obs_map_bits / obs_map with obs_aux)")
    n = None
    for key in (k for k in sf.fields if k in OBS_KEYS + ROW_KEYS):
        shape = sf.shape(key)
        if not shape:
            raise sf.fail(key, "is a scalar; expected one row per sample")
        if n is None:
            n, first = shape[0], key
        elif shape[0] != n:
            raise sf.fail(key, f"has {shape[0]} rows but {first} has {n}")
        if sf.dtype(key).hasobject and key in ROW_KEYS and not config.trust_pickle:
            raise sf.fail(key, f"object array (stored with pickle): {PICKLE_WHY}")
    for key in (k for k in sf.fields if k in SCALAR_KEYS):
        if sf.shape(key) != () or sf.dtype(key).kind not in "iu":
            raise sf.fail(key, f"expected an integer scalar, got shape {sf.shape(key)} {sf.dtype(key)}")
    if n == 0:
        raise sf.fail("action", "no rows")
    if config.num_envs is not None and n % config.num_envs:
        raise sf.fail("action", f"{n} rows is not a multiple of --num-envs {config.num_envs}")
    want = tuple(info.obs_shape)
    if "obs" in sf.fields:
        got, dtype = sf.shape("obs")[1:], sf.dtype("obs")
        kinds = "fu" if info.pixels else "f"
        if got != want or dtype.kind not in kinds or (dtype.kind == "u" and dtype != np.uint8):
            raise sf.fail("obs", f"rows of shape {got} {dtype}, but {info.name} observations are {want} "
                                 f"{'float pixels in [0, 1] or uint8' if info.pixels else 'float'}{_env_hint(got)}")
        if "next_obs" in sf.fields and sf.fields["next_obs"][:2] != sf.fields["obs"][:2]:
            raise sf.fail("next_obs", f"shape {sf.shape('next_obs')} {sf.dtype('next_obs')} differs from obs "
                                      f"{sf.shape('obs')} {dtype}")
    else:
        if info.pixels:
            raise sf.fail("obs_map_bits" if "obs_map_bits" in sf.fields else "obs_map",
                          f"a compact symbolic map, but {info.name} observations are pixels")
        _compact_sizes(sf, info)
        if "next_obs" in sf.fields:
            raise sf.fail("next_obs", "stored beside compact observations (obs_map_bits / obs_map); expected none")
    action = sf.dtype("action")
    if len(sf.shape("action")) != 1 or action.kind not in "iuf":
        raise sf.fail("action", f"shape {sf.shape('action')} {action}; expected (N,) integer or float action ids")
    if len(sf.shape("done")) != 1 or sf.dtype("done").kind not in "biuf":
        raise sf.fail("done", f"shape {sf.shape('done')} {sf.dtype('done')}; expected (N,) bool, 0/1 integers or floats")
    for key in ("reward", "log_prob"):
        if key in sf.fields and (len(sf.shape(key)) != 1 or sf.dtype(key).kind not in "iuf"):
            raise sf.fail(key, f"shape {sf.shape(key)} {sf.dtype(key)}; expected (N,) numbers")
    for key in ("text_obs", "text_generated"):
        if key in sf.fields and (len(sf.shape(key)) != 1 or sf.dtype(key).kind not in "USO"):
            raise sf.fail(key, f"shape {sf.shape(key)} {sf.dtype(key)}; expected (N,) strings")
    if "hidden_state" in sf.fields:
        shape, dtype = sf.shape("hidden_state"), sf.dtype("hidden_state")
        if len(shape) not in (2, 3) or dtype.kind != "f" or 0 in shape[1:]:
            raise sf.fail("hidden_state", f"shape {shape} {dtype}; expected (N, H) or (N, T, H) floats")
        if "hidden_tokens" in sf.fields and (len(shape) != 3 or sf.shape("hidden_tokens") != shape[:1]
                                             or sf.dtype("hidden_tokens").kind not in "iu"):
            raise sf.fail("hidden_tokens", f"shape {sf.shape('hidden_tokens')} {sf.dtype('hidden_tokens')}; expected "
                                           f"(N,) integer counts beside a per-token (N, T, H) hidden_state")
    elif "hidden_tokens" in sf.fields:
        raise sf.fail("hidden_tokens", "present without hidden_state")
    return n


def _env_hint(row_shape) -> str:
    from hsrl.env.catalog import env_info

    fits = [name for name in ENV_NAMES if tuple(env_info(name).obs_shape) == tuple(row_shape)]
    return f" (that is {fits[0]}'s shape: pass --env {fits[0]})" if fits else ""


def _compact_sizes(sf: SourceFile, info) -> tuple[int, int]:
    """(map size M, scalars A) of a compact file, checked against the env and the file's own size scalars."""
    from hsrl.text import symbolic_map_size

    D = int(info.obs_shape[0])
    aux = sf.shape("obs_aux")
    if len(aux) != 2 or sf.dtype("obs_aux").kind != "f":
        raise sf.fail("obs_aux", f"shape {aux} {sf.dtype('obs_aux')}; expected (N, A) floats")
    M = D - aux[1]
    if M != symbolic_map_size(info.variant):
        raise sf.fail("obs_aux", f"{aux[1]} scalars per row, but {info.name}'s observation is "
                                 f"{symbolic_map_size(info.variant)} map values then {D - symbolic_map_size(info.variant)} "
                                 f"scalars")
    if "obs_map_bits" in sf.fields:
        bits = sf.shape("obs_map_bits")
        if len(bits) != 2 or sf.dtype("obs_map_bits") != np.uint8 or bits[1] != -(-M // 8):
            raise sf.fail("obs_map_bits", f"shape {bits} {sf.dtype('obs_map_bits')}; expected (N, {-(-M // 8)}) uint8: "
                                          f"{info.name}'s {M} map values packed 8 to a byte")
    else:
        shape = sf.shape("obs_map")
        if len(shape) != 2 or shape[1] != M or sf.dtype("obs_map").kind != "f":
            raise sf.fail("obs_map", f"shape {shape} {sf.dtype('obs_map')}; expected (N, {M}) floats")
    return M, aux[1]


# ------------------------------------------------------------------------------------------------- conversion


def _scalar(sf: SourceFile, key: str) -> int | None:
    return int(sf.read(key)[()]) if key in sf.fields else None


def read_obs(sf: SourceFile, info, stop: int | None = None) -> np.ndarray:
    """A source file's observations as hsrl stores them ((N, D) float32 or (N, H, W, 3) uint8), rebuilt from the
    compact variant where needed; `stop`: only the first rows."""
    if "obs" in sf.fields:
        raw = sf.read("obs") if stop is None else sf.rows("obs", stop)
        return _obs_values(sf, "obs", raw, info)
    M, A = _compact_sizes(sf, info)
    for key, want in (("obs_map_dim", M), ("obs_aux_dim", A), ("obs_dim", M + A)):
        got = _scalar(sf, key)
        if got is not None and got != want:
            raise sf.fail(key, f"{got}, but {info.name} observations are {M} map values then {A} scalars")
    packed = _scalar(sf, "obs_packed")
    if packed is not None and packed != int("obs_map_bits" in sf.fields):
        raise sf.fail("obs_packed", f"{packed}, but the file holds {'obs_map_bits' if 'obs_map_bits' in sf.fields else 'obs_map'}")
    aux = (sf.read("obs_aux") if stop is None else sf.rows("obs_aux", stop)).astype(np.float32)
    if "obs_map_bits" in sf.fields:
        bits = sf.read("obs_map_bits") if stop is None else sf.rows("obs_map_bits", stop)
        if M % 8:
            tail = np.unpackbits(bits[:, -1:], axis=1, bitorder="little")[:, M % 8:]
            if tail.any():
                row = int(np.flatnonzero(tail.any(axis=1))[0])
                raise sf.fail("obs_map_bits", f"row {row} sets padding bits past the {M} map values: not "
                                              f"{info.name}'s map packed with bitorder='little'")
        grid = np.unpackbits(bits, axis=1, count=M, bitorder="little").astype(np.float32)
    else:
        grid = (sf.read("obs_map") if stop is None else sf.rows("obs_map", stop)).astype(np.float32)
    obs = np.concatenate([grid, aux], axis=1)
    _check_decodes(sf, "obs_map_bits" if "obs_map_bits" in sf.fields else "obs_map", obs, info)
    return obs


def _obs_values(sf: SourceFile, key: str, raw: np.ndarray, info) -> np.ndarray:
    if info.pixels:
        from hsrl.pixels import pixels_to_uint8

        try:
            return pixels_to_uint8(raw)
        except ValueError as err:
            raise sf.fail(key, str(err)) from None
    return raw.astype(np.float32)


def _check_decodes(sf: SourceFile, key: str, obs: np.ndarray, info, block: int = 4096) -> None:
    from hsrl.text import decode_symbolic

    for start in range(0, len(obs), block):
        try:
            decode_symbolic(obs[start:start + block], info.variant)
        except ValueError as err:
            raise sf.fail(key, f"does not decode to {info.name} observations ({err}; rows from {start}): bits packed "
                               f"in another order or layout?") from None


def _action(sf: SourceFile, num_actions: int, env_name: str) -> np.ndarray:
    a = sf.read("action")
    if a.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(a) | (a != np.rint(a))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise sf.fail("action", f"row {row} holds {a[row]}, not a whole action id")
    bad = (a < 0) | (a >= num_actions)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise sf.fail("action", f"row {row} holds {a[row]}, outside the {num_actions} actions (0 to "
                                f"{num_actions - 1}) of {env_name}")
    return a.astype(np.int32)


def _done(sf: SourceFile) -> np.ndarray:
    d = sf.read("done")
    if d.dtype.kind == "b":
        return d.astype(bool)
    bad = (d != 0) & (d != 1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise sf.fail("done", f"row {row} holds {d[row]}; expected only 0 and 1")
    return d == 1


def _text(sf: SourceFile, key: str, trust_pickle: bool) -> np.ndarray:
    x = sf.read(key, trust_pickle)
    out = np.empty(len(x), dtype=object)
    for i, value in enumerate(x.tolist()):
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as err:
                raise sf.fail(key, f"row {i} is bytes that are not UTF-8 ({err})") from None
        if not isinstance(value, str):
            raise sf.fail(key, f"row {i} holds a {type(value).__name__}, not a string")
        out[i] = value
    return out


def _follow_on(obs_tm: np.ndarray, nxt_tm: np.ndarray, done_tm: np.ndarray, first_next: np.ndarray | None):
    """Per (t, env): whether next_obs equals the same env's obs one step later (NaN never equal), and whether that
    later obs is known (the last step only with `first_next`, the next file's first step)."""
    T, E = done_tm.shape
    same = np.zeros((T, E), bool)
    for t in range(T):
        later = obs_tm[t + 1] if t + 1 < T else first_next
        if later is not None:
            same[t] = (nxt_tm[t] == later).reshape(E, -1).all(axis=1)
    comparable = np.ones((T, E), bool)
    if first_next is None:
        comparable[-1] = False
    return same, comparable


def infer_num_envs(obs: np.ndarray, nxt: np.ndarray, done: np.ndarray) -> int | None:
    """The smallest E (dividing N, with at least two steps) for which next_obs of every row whose episode goes on
    is the obs E rows later; None if there is none."""
    n = len(obs)
    for E in (e for e in range(1, n // 2 + 1) if n % e == 0):
        first = ~done[:E] & ~(nxt[:E] == obs[E:2 * E]).reshape(E, -1).all(axis=1)
        if first.any():  # the first step already disagrees
            continue
        tm = lambda x: x.reshape((n // E, E) + x.shape[1:])  # noqa: E731
        same, _ = _follow_on(tm(obs), tm(nxt), tm(done), None)
        if not (~same[:-1] & ~tm(done)[:-1]).any():
            return E
    return None


# How the number of environments E was established (each chunk's `num_envs_source`, and the summary).
FROM_NEXT_OBS = "inferred from next_obs: each row's next_obs is the obs E rows later wherever its episode goes on"
CHECKED_NEXT_OBS = "--num-envs, checked: next_obs continuity (each row's next_obs is the obs E rows later)"
FROM_MAP = ("inferred from map continuity: the map view of row t + E is that of row t moved by at most one tile "
            "wherever the episode goes on, for no smaller E")
CHECKED_MAP = "--num-envs, checked: map continuity between rows t and t + E, and for no smaller E"
UNCHECKED = "--num-envs, unchecked: nothing in the data can confirm it"
UNCHECKED_PIXELS = UNCHECKED + " (no next_obs; pixel observations)"
UNCHECKED_MAPS = UNCHECKED + " (no next_obs; the map views continue at no E)"
CONTINUES = 0.8  # share of sampled rows whose map view continues E rows later for E to count as the data's
CONTINUITY_PAIRS = 2048  # rows sampled per candidate E (evenly spread over the file)
CONTINUITY_MIN_PAIRS = 8  # fewer comparable rows than this tell nothing
CHANGED_TILES = 2  # tiles a step may change within the view: the one the player acts on, and a growing plant


def _block_grids(obs: np.ndarray, info, sf: SourceFile | None = None, block: int = 4096) -> np.ndarray:
    """(N, rows, cols) int8 block index of each tile of symbolic observations, -1 where a tile is not lit; `sf`: a
    file whose observations do not decode is refused, naming it."""
    from hsrl.text import decode_symbolic

    try:
        return np.concatenate([decode_symbolic(obs[start:start + block], info.variant)["block"].astype(np.int8)
                               for start in range(0, len(obs), block)])
    except ValueError as err:
        if sf is None:
            raise
        raise sf.fail("obs", f"does not decode to {info.name} observations ({err})") from None


def _views_continue(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pair of (P, rows, cols) block grids: whether b is a moved by at most one tile (the player steps at most
    one tile; b[y, x] shows what a showed at [y + dy, x + dx]), with at most `CHANGED_TILES` tiles changed on the
    overlap; and whether the pair can be compared at all (at least half of an overlap lit in both)."""
    R, C = a.shape[1:]
    continues = np.zeros(len(a), bool)
    comparable = np.zeros(len(a), bool)
    for dy, dx in ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)):
        A = a[:, max(dy, 0):R + min(dy, 0), max(dx, 0):C + min(dx, 0)]
        B = b[:, max(-dy, 0):R + min(-dy, 0), max(-dx, 0):C + min(-dx, 0)]
        seen = (A >= 0) & (B >= 0)
        enough = seen.sum(axis=(1, 2)) * 2 >= A.shape[1] * A.shape[2]
        comparable |= enough
        continues |= enough & ((seen & (A != B)).sum(axis=(1, 2)) <= CHANGED_TILES)
    return continues, comparable


def map_continuity(grids: np.ndarray, done: np.ndarray, E: int, pairs: int = CONTINUITY_PAIRS) -> tuple[float, int]:
    """(share, count): of up to `pairs` rows t evenly spread over those whose episode goes on (not done, t + E in
    the file) and whose views can be compared, the share whose map view continues in row t + E (`_views_continue`)."""
    rows = np.flatnonzero(~done[:len(done) - E])
    if len(rows) > pairs:
        rows = rows[np.linspace(0, len(rows) - 1, pairs).astype(np.int64)]
    continues, comparable = _views_continue(grids[rows], grids[rows + E])
    count = int(comparable.sum())
    return (float(continues[comparable].mean()) if count else 0.0), count


def num_envs_from_maps(grids: np.ndarray, done: np.ndarray) -> tuple[int | None, dict[int, tuple[float, int]]]:
    """The smallest E (dividing N, at least two steps) for which at least `CONTINUES` of the rows whose episode goes
    on continue in the row E later (`map_continuity`), or None; with the (share, count) of every E tried.

    Rows E apart are the same environment one step later only when E is the number of environments (or a multiple
    of it); rows of different environments show different places, so their views do not continue."""
    n = len(grids)
    candidates = np.arange(1, n // 2 + 1)
    tried: dict[int, tuple[float, int]] = {}
    for E in candidates[n % candidates == 0].tolist():
        tried[E] = share, count = map_continuity(grids, done, E)
        if count >= CONTINUITY_MIN_PAIRS and share >= CONTINUES:
            return E, tried
    return None, tried


def check_num_envs_by_maps(sf: SourceFile, obs: np.ndarray, done: np.ndarray, E: int, info) -> bool:
    """Whether this file's map views confirm E (True) or tell nothing (False); a file whose rows continue at another
    E is refused, naming the file and the shares."""
    grids = _block_grids(obs, info, sf)
    found, tried = num_envs_from_maps(grids, done)
    if found is None or found == E:
        return found == E
    share = tried[E][0] if E in tried else map_continuity(grids, done, E)[0]
    raise sf.fail("obs", f"contradicts --num-envs {E}: only {share:.0%} of the rows whose episode goes on continue in "
                         f"the row {E} later (the map view moves at most one tile a step), while at {found} "
                         f"{tried[found][0]:.0%} do: the rows interleave {found} environments (pass --num-envs "
                         f"{found})")


def _next_obs(sf: SourceFile, obs: np.ndarray, done: np.ndarray, E: int, first_next: np.ndarray | None, info):
    """(next_obs, next_obs_known, note) as stored: the source's (checked) or rebuilt (module docstring)."""
    T = len(obs) // E
    obs_tm, done_tm = obs.reshape((T, E) + obs.shape[1:]), done.reshape(T, E)
    if "next_obs" in sf.fields:
        nxt_tm = _obs_values(sf, "next_obs", sf.read("next_obs"), info).reshape(obs_tm.shape)
        same, comparable = _follow_on(obs_tm, nxt_tm, done_tm, first_next)
        bad = comparable & ~done_tm & ~same
        if bad.any():
            t, e = np.argwhere(bad)[0]
            raise sf.fail("next_obs", f"row {t * E + e} is not the obs of row {(t + 1) * E + e} although its episode "
                                      f"goes on: the rows are not time-major over {E} environments (pass the run's "
                                      f"NUM_ENVS as --num-envs)")
        known = ~(done_tm & (same | ~comparable))  # a done row's next_obs must differ from the reset obs after it
        nxt_tm = np.where(known.reshape(known.shape + (1,) * (obs.ndim - 1)), nxt_tm, 0).astype(obs.dtype)
        note = "from the source; at done rows only where it is not the next episode's first observation"
    else:
        nxt_tm = np.zeros_like(obs_tm)
        nxt_tm[:-1] = obs_tm[1:]
        known = np.ones((T, E), bool)
        if first_next is not None:
            nxt_tm[-1] = first_next
        else:
            known[-1] = False
        known &= ~done_tm
        nxt_tm[~known] = 0
        note = "rebuilt: the same env's obs one step later"
    return nxt_tm.reshape(obs.shape), known.reshape(-1), note


def _token_counts(sf: SourceFile, block: np.ndarray, start: int) -> np.ndarray:
    """Valid tokens per row of a (b, T, H) block from its zero padding: up to the last nonzero vector."""
    nonzero = (block != 0).any(axis=2)
    T = block.shape[1]
    counts = T - np.argmax(nonzero[:, ::-1], axis=1)
    empty = ~nonzero.any(axis=1)
    if empty.any():
        raise sf.fail("hidden_state", f"row {start + int(np.flatnonzero(empty)[0])} holds only zero vectors: no "
                                      f"token to pool")
    inner = (np.arange(T) < counts[:, None]) & ~nonzero
    if inner.any():
        row, pos = np.argwhere(inner)[0]
        raise sf.fail("hidden_state", f"row {start + row}: position {pos} is a zero vector before its last nonzero one "
                                      f"({counts[row] - 1}): not zero padding at the end, so the valid tokens cannot be "
                                      f"told from it")
    return counts.astype(np.int32)


def _hidden(sf: SourceFile, per_token: bool):
    """(arrays, streamed) for `write_chunk_streamed`: pooled states as an array; per-token ones streamed with their
    counts (the source's `hidden_tokens`, else derived from the zero padding block by block)."""
    if not per_token:
        return {"hidden_state": sf.read("hidden_state")}, {}
    shape, dtype = sf.shape("hidden_state"), sf.dtype("hidden_state")
    out_dtype = np.dtype(np.float32) if dtype.itemsize > 4 else dtype
    if out_dtype not in (np.float16, np.float32):
        out_dtype = np.dtype(np.float32)
    if "hidden_tokens" in sf.fields:
        counts = sf.read("hidden_tokens")
        bad = np.flatnonzero((counts < 1) | (counts > shape[1]))
        if len(bad):
            raise sf.fail("hidden_tokens", f"row {bad[0]} counts {counts[bad[0]]} tokens; each row needs 1 to "
                                           f"T = {shape[1]}")
        blocks = (b.astype(out_dtype, copy=False) for b in sf.blocks("hidden_state"))
        return {"hidden_tokens": counts.astype(np.int32)}, {"hidden_state": (shape, out_dtype, blocks)}
    found: list[np.ndarray] = []

    def states():
        start = 0
        for block in sf.blocks("hidden_state"):
            found.append(_token_counts(sf, block, start))
            start += len(block)
            yield block.astype(out_dtype, copy=False)

    def counts():  # consumed after states(): the counts are known by then
        yield np.concatenate(found)

    return {}, {"hidden_state": (shape, out_dtype, states()), "hidden_tokens": (shape[:1], np.int32, counts())}


# ------------------------------------------------------------------------------------------------- the import


def _identity(item: Planned, src: Path) -> dict:
    """What makes a chunk this import's: the source file (name, size, mtime), what follows it, the import version
    (with the env, num_envs and segment of the chunk's meta: `_existing`)."""
    stat = item.path.stat()
    return {"version": IMPORT_VERSION, "source": str(src.resolve()), "file": item.path.name, "bytes": stat.st_size,
            "mtime_ns": stat.st_mtime_ns, "batch_index": item.index,
            "continues_into": None if item.next_path is None else item.next_path.name}


IDENTITY_FIELDS = ("version", "source", "file", "bytes", "mtime_ns", "batch_index", "continues_into")


def _existing(dst: Path, plan: ImportPlan, E: int, identities: dict[int, dict]) -> set[int]:
    """Indices whose chunk DST already holds from the same source file with the same settings (skipped); anything
    else in DST is refused before any work, naming the file and what differs."""
    if not dst.is_dir():
        return set()
    wanted = {item.index: item for item in plan.files}
    done = set()
    for p in sorted(dst.iterdir()):
        m = CHUNK_PATTERN.match(p.name)
        if not m:
            continue
        index = int(m.group(1))
        try:
            meta = inspect_chunk(p).meta
        except DataFileError as err:
            raise InputError(f"{p}: holds an unreadable chunk ({err.problem}): choose an empty output folder") from None
        made = meta.extra.get(IMPORT_KEY) if isinstance(meta.extra, dict) else None
        if not isinstance(made, dict):
            raise InputError(f"{p}: an hsrl chunk not made by `hsrl import`: choose an empty output folder")
        if index not in wanted:
            raise InputError(f"{p}: imported from {made.get('source')}/{made.get('file')}, which is not among this "
                             f"import's files: choose another output folder")
        item = wanted[index]
        want = {**identities[index], "env_name": plan.env_name, "num_envs": E, "segment": item.segment}
        have = {**{k: made.get(k) for k in IDENTITY_FIELDS}, "env_name": meta.env_name, "num_envs": meta.num_envs,
                "segment": meta.segment}
        differ = [k for k in want if want[k] != have[k]]
        if differ:
            raise InputError(f"{p}: imported with other settings or from another file (differs in "
                             f"{', '.join(differ)}); hsrl writes over no file it did not make with the same settings: "
                             f"choose another output folder")
        done.add(index)
    return done


def _num_envs(config: ImportConfig, plan: ImportPlan, info) -> tuple[int, str]:
    """(E, how it was established): read from next_obs where stored (given: checked file by file in `_next_obs`),
    else from the map views of symbolic observations (`num_envs_from_maps`, the first file that tells it; given:
    refused where a file's rows continue at another E, here and in `convert_file`), else --num-envs unchecked."""
    if plan.has_next_obs:
        if config.num_envs is not None:
            return config.num_envs, CHECKED_NEXT_OBS
        for item in plan.files:
            with SourceFile(item.path, item.index) as sf:
                obs = read_obs(sf, info)
                nxt = _obs_values(sf, "next_obs", sf.read("next_obs"), info)
                E = infer_num_envs(obs, nxt, _done(sf))
            if E is not None:
                return E, FROM_NEXT_OBS
        raise DataFileError(plan.files[0].path, "next_obs", "no number of environments E makes next_obs the obs E "
                                                            "rows later wherever an episode goes on: pass --num-envs")
    if plan.obs_kind == "symbolic":
        for item in plan.files:
            with SourceFile(item.path, item.index) as sf:
                obs, done = read_obs(sf, info), _done(sf)
                if config.num_envs is not None:
                    if check_num_envs_by_maps(sf, obs, done, config.num_envs, info):
                        return config.num_envs, CHECKED_MAP
                    continue
                E, _ = num_envs_from_maps(_block_grids(obs, info, sf), done)
            if E is not None:
                return E, FROM_MAP
    if config.num_envs is None:
        raise DataFileError(plan.files[0].path, "next_obs", "missing, so the number of environments the rows "
                                                            "interleave cannot be read from next_obs, nor from the map "
                                                            "views: pass --num-envs (the NUM_ENVS of the run that "
                                                            "wrote them)")
    return config.num_envs, UNCHECKED_MAPS if plan.obs_kind == "symbolic" else UNCHECKED_PIXELS


def convert_file(config: ImportConfig, plan: ImportPlan, item: Planned, E: int, identity: dict, info,
                 num_envs_source: str = UNCHECKED_PIXELS) -> Path:
    """Write one source file as DST/chunk_NNNNNN.npz (atomically) and read it back whole with hsrl's reader; a file
    whose map views contradict E is refused (`check_num_envs_by_maps`: symbolic observations without next_obs)."""
    out = chunk_path(config.out, item.index)
    with SourceFile(item.path, item.index) as sf:
        if item.rows % E:
            raise sf.fail("action", f"{item.rows} rows is not a multiple of {E} environments")
        obs = read_obs(sf, info)
        done = _done(sf)
        if not plan.has_next_obs and plan.obs_kind == "symbolic":
            check_num_envs_by_maps(sf, obs, done, E, info)
        first_next = None
        if item.next_path is not None:
            with SourceFile(item.next_path, item.index + 1) as nf:
                first_next = read_obs(nf, info, stop=E)
        nxt, known, next_note = _next_obs(sf, obs, done, E, first_next, info)
        arrays = {"obs": obs, "next_obs": nxt, "next_obs_known": known, "done": done,
                  "action": _action(sf, info.num_actions, info.name),
                  "reward": sf.read("reward").astype(np.float32)}
        if "log_prob" in sf.fields:
            arrays["log_prob"] = sf.read("log_prob").astype(np.float32)
        for key in ("text_obs", "text_generated"):
            if key in sf.fields:
                arrays[key] = _text(sf, key, config.trust_pickle)
        streamed = {}
        if plan.per_token is not None:
            hidden, streamed = _hidden(sf, plan.per_token)
            arrays.update(hidden)
        converted = {key: str(sf.dtype(key)) for key in ("action", "done", "reward", "log_prob", "obs", "hidden_state")
                     if key in sf.fields}
        record = {
            **identity, "source_keys": sorted(sf.fields), "dropped": sorted(k for k in sf.fields
                                                                              if k not in OBS_KEYS + SCALAR_KEYS + ROW_KEYS),
            "source_dtypes": converted, "num_envs_source": num_envs_source, "next_obs": next_note,
            "next_obs_unknown_rows": int((~known).sum()),
            "obs": "rebuilt from obs_map_bits and obs_aux (bitorder little)" if "obs_map_bits" in sf.fields
            else "rebuilt from obs_map and obs_aux" if "obs_map" in sf.fields else "from the source",
            "hidden_state": FOREIGN_HIDDEN if plan.per_token is not None else None,
            "hidden_tokens": ("derived from the zero padding" if plan.per_token and "hidden_tokens" not in sf.fields
                              else "from the source" if plan.per_token else None),
            "text_obs": IMPORTED_TEXT if "text_obs" in sf.fields else None,
        }
        meta = ChunkMeta(env_name=info.name, num_envs=E, obs_kind=plan.obs_kind, first_step=None,
                         segment=item.segment, extra={IMPORT_KEY: record})
        if streamed:
            write_chunk_streamed(out, arrays, meta, streamed)
        else:
            write_chunk(out, arrays, meta)
    verify_chunk(out, item.rows)
    return out


def verify_chunk(path: Path, rows: int) -> None:
    """Read every key of a written chunk to its end with hsrl's reader, checking each value as hsrl's verbs do
    (per-token states as their pooled rows, block by block); the right row count."""
    from hsrl.data.chunks import CODE_POINT_KEYS
    from hsrl.data.dataset import read_pooled_hidden

    with ChunkReader(path) as reader:
        if reader.info.num_rows != rows:
            raise DataFileError(path, None, f"holds {reader.info.num_rows} rows, the source {rows}")
        for key, (shape, _) in reader.info.fields.items():
            if key == "hidden_state" and len(shape) == 3:
                read_pooled_hidden(reader)
            elif key in CODE_POINT_KEYS:
                reader.read_text(key)
            else:
                reader.read(key)


@dataclass
class ImportSummary:
    out: Path
    files: int = 0
    written: int = 0
    skipped: int = 0
    rows: int = 0
    num_envs: int = 0
    num_envs_source: str = ""
    segments: int = 0
    unknown_next_obs: int = 0
    dropped: tuple[str, ...] = ()
    pickled: tuple[str, ...] = ()
    per_token: bool | None = None
    written_files: list[str] = dataclasses.field(default_factory=list)


def import_trajectories(config: ImportConfig) -> ImportSummary:
    """Convert SRC's trajectories into DST's chunks (see the module docstring); resumable."""
    from hsrl.env.catalog import env_info

    plan = plan_import(config)
    info = env_info(config.env)
    E, E_source = _num_envs(config, plan, info)
    for item in plan.files:
        if item.rows % E:
            raise DataFileError(item.path, "action", f"{item.rows} rows is not a multiple of {E} environments")
    src, dst = Path(config.source), Path(config.out)
    identities = {item.index: _identity(item, src) for item in plan.files}
    done = _existing(dst, plan, E, identities)
    dst.mkdir(parents=True, exist_ok=True)
    remove_temporaries(dst, "chunk_*.npz")  # what a killed import left
    summary = ImportSummary(dst, files=len(plan.files), num_envs=E, num_envs_source=E_source,
                            segments=plan.files[-1].segment + 1,
                            dropped=plan.dropped, pickled=plan.pickled, per_token=plan.per_token)
    for item in progress(plan.files, "import", config.progress):
        summary.rows += item.rows
        if item.index in done:
            summary.skipped += 1
            continue
        out = convert_file(config, plan, item, E, identities[item.index], info, E_source)
        summary.written += 1
        summary.written_files.append(out.name)
    infos = [inspect_chunk(chunk_path(dst, item.index)) for item in plan.files]
    check_consecutive(infos)
    summary.unknown_next_obs = sum(int(i.meta.extra[IMPORT_KEY]["next_obs_unknown_rows"]) for i in infos)
    return summary


def format_summary(summary: ImportSummary) -> str:
    s = summary
    lines = [f"{s.out}: {s.files} chunks ({s.written} written, {s.skipped} already imported), {s.rows} rows over "
             f"{s.num_envs} environments in {s.segments} segment{'s' if s.segments != 1 else ''}"
             f"{' (gaps between batch indices: returns never span them)' if s.segments > 1 else ''}"]
    lines.append(f"environments: {s.num_envs}, {s.num_envs_source}" + (
        ": a wrong --num-envs gives wrong next_obs, returns, history windows and refresh schedule"
        if s.num_envs_source.startswith(UNCHECKED) else ""))
    if s.per_token is not None:
        lines.append(f"hidden_state: {'per-token, with hidden_tokens' if s.per_token else 'pooled'}; foreign (no "
                     f"extraction spec): `hsrl eval` with live states needs --spec")
    lines.append(f"next_obs: {s.unknown_next_obs} rows unknown (next_obs_known False, zeros)")
    if s.pickled:
        lines.append(f"read with --trust-pickle: {', '.join(s.pickled)}")
    if s.dropped:
        lines.append(f"not carried over: {', '.join(s.dropped)}"
                     + (" (rerun `hsrl returns` for returns)" if set(s.dropped) & set(RECOMPUTED) else ""))
    lines.append(f"next: hsrl returns {s.out}")
    return "\n".join(lines)


__all__ = ["ImportConfig", "ImportSummary", "SourceFile", "format_summary", "import_trajectories", "infer_num_envs",
           "plan_import", "read_obs", "source_files"]
