"""Dataset loading: many chunk files concatenated into one array per key, optionally cached memory-mapped.

The chunk format (keys, validation, reading one file) is `hsrl.data.chunks`; this module plans and fills the
concatenated arrays, keeps the `.npy` cache, and is the one place where stored per-token hidden states become
pooled ones (`read_pooled_hidden`).

Per-token hidden states. Labelling with `--save-token-states` stores `hidden_state` as (N, T, H) float16 with
`hidden_tokens` (N,): row i's real tokens are positions 0 .. hidden_tokens[i] - 1, the rest zero padding. Read
as pooled, a row is what labelling without `--save-token-states` stores: `hsrl.llm.pooling.pool` (the one pooling
function) of its valid tokens by the file's spec pooling ('mean': their float32 mean; 'last': the last of them;
'mean' for files without a spec), computed block by block while the file is decompressed, so the (N, T, H)
array is never in memory. Per-token files without `hidden_tokens` (as other tools write them) are refused
unless `all_tokens_valid` says every one of the T positions is a real token.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from hsrl.atomic import write_text_atomic
from hsrl.data.chunks import (
    CODE_POINT_KEYS, KEYS, META_KEY, SCHEMA_VERSION, ChunkInfo, ChunkMeta, ChunkReader, DataFileError, decode_text,
    check_same_row_shape, inspect_chunk, list_chunks, progress,
)
from hsrl.llm.spec import POOLINGS, spec_differences
from hsrl.pixels import uint8_to_pixels

POOL_BLOCK_BYTES = 16 << 20  # per-token states pooled per step while reading: at most this much stored data
POOL_METHOD = "hsrl.llm.pooling.pool by the spec's pooling over the first hidden_tokens positions"  # cache manifest


@dataclass(frozen=True)
class Dataset:
    """Arrays of many chunks, concatenated in file order (rows of file i at `offsets[i]:offsets[i+1]`).

    Arrays keep their stored dtype (pixels stay uint8: a quarter of float32); `batch` gathers rows and
    turns pixel observations into float32 with `uint8_to_pixels`. `meta` is the first file's; the env,
    observation kind, extraction spec (and gamma, when returns are loaded) are checked equal across files.
    """

    arrays: dict[str, np.ndarray]
    meta: ChunkMeta
    files: tuple[Path, ...]
    offsets: np.ndarray

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]

    def batch(self, index) -> dict[str, np.ndarray]:
        """Rows `index` of every loaded key; pixel obs/next_obs as float32 in [0, 1]."""
        out = {k: v[index] for k, v in self.arrays.items()}
        if self.meta.obs_kind == "pixels":
            for k in ("obs", "next_obs"):
                if k in out:
                    out[k] = uint8_to_pixels(out[k])
        return out


class HiddenLayout(NamedTuple):
    """How a dataset stores `hidden_state` (`hidden_layout`)."""

    per_token: bool  # (N, T, H) per-token states, not (N, H) pooled
    has_token_counts: bool  # the file carries `hidden_tokens` (valid tokens per row)
    hidden_size: int  # H


def _source_files(source) -> list[Path]:
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        return list_chunks(source)
    files = [Path(p) for p in ([source] if isinstance(source, (str, os.PathLike)) else source)]
    if not files:
        raise ValueError("no chunk files given")
    return files


def hidden_layout(source: str | os.PathLike | Sequence[str | os.PathLike]) -> HiddenLayout:
    """(per_token, has_token_counts, hidden_size) of a dataset folder (or file list), from its first file's
    headers (no array decompressed). Raises DataFileError when the file carries no hidden_state."""
    files = _source_files(source)
    info = inspect_chunk(files[0])
    if "hidden_state" not in info.fields:
        raise DataFileError(files[0], "hidden_state", "missing: label the data with `hsrl label` first")
    shape = info.fields["hidden_state"][0]
    return HiddenLayout(len(shape) == 3, "hidden_tokens" in info.fields, int(shape[-1]))


def check_token_counts(info: ChunkInfo, all_tokens_valid: bool = False) -> None:
    """A file's `hidden_state` can be read pooled: pooled already, or per-token with `hidden_tokens`, or per-token
    without them and `all_tokens_valid`. Else a one-line DataFileError naming the file and `hidden_tokens`."""
    if "hidden_state" not in info.fields or len(info.fields["hidden_state"][0]) != 3:
        return
    if "hidden_tokens" not in info.fields and not all_tokens_valid:
        raise DataFileError(info.path, "hidden_tokens", (
            f"missing: hidden_state is stored per-token {info.fields['hidden_state'][0]} without the count of valid "
            f"tokens per row, so padding cannot be told from tokens; pass --all-tokens-valid (all_tokens_valid=True) "
            f"if every one of the T positions is a real token"))


def _spec_pooling(info: ChunkInfo) -> str:
    """The pooling labelling used for this file's pooled states: its spec's ('mean' without a spec)."""
    if info.meta.spec_json is None:
        return "mean"
    pooling = json.loads(info.meta.spec_json).get("pooling", "mean")
    if pooling not in POOLINGS:
        raise DataFileError(info.path, META_KEY, f"spec pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
    return pooling


class _TokenPool:
    """Pools the (b, T, H) blocks of one file's per-token states, in row order, with `hsrl.llm.pooling.pool`."""

    def __init__(self, counts: np.ndarray, pooling: str):
        self.counts, self.pooling, self.rows = counts, pooling, 0

    def __call__(self, block: np.ndarray) -> np.ndarray:
        import torch

        from hsrl.llm.pooling import pool

        counts = self.counts[self.rows:self.rows + len(block)]
        self.rows += len(block)
        mask = np.arange(block.shape[1]) < counts[:, None]
        return pool(torch.from_numpy(block), torch.from_numpy(mask), self.pooling).numpy()


def read_pooled_hidden(reader: ChunkReader, out: np.ndarray | None = None, *,
                       all_tokens_valid: bool = False) -> np.ndarray:
    """An open chunk's hidden states as pooled (N, H) rows (into `out` if given, else float32).

    Pooled files are read as stored. Per-token files are pooled while reading, `POOL_BLOCK_BYTES` of stored
    states at a time (see the module docstring): row i over its first `hidden_tokens[i]` positions, or over all T
    with `all_tokens_valid` when the file has no `hidden_tokens` (else refused, `check_token_counts`).
    """
    info = reader.info
    if "hidden_state" not in info.fields:
        raise DataFileError(info.path, "hidden_state", "missing")
    shape = info.fields["hidden_state"][0]
    if len(shape) == 2:
        return reader.read("hidden_state", out) if out is not None else \
            reader.read("hidden_state").astype(np.float32, copy=False)
    check_token_counts(info, all_tokens_valid)
    n, width = shape[0], shape[1]
    if "hidden_tokens" in info.fields:
        counts = reader.read("hidden_tokens").astype(np.int64)
        bad = np.flatnonzero((counts < 1) | (counts > width))
        if len(bad):
            raise DataFileError(info.path, "hidden_tokens", f"rows {bad[:10].tolist()} count {counts[bad[:10]].tolist()} "
                                                            f"tokens; each row needs 1 to T = {width}")
    else:
        counts = np.full(n, width, np.int64)
    if out is None:
        out = np.empty((n, shape[2]), np.float32)
    transform = _TokenPool(counts, _spec_pooling(info))
    reader.read("hidden_state", out, transform, block_bytes=POOL_BLOCK_BYTES)
    if transform.rows != n:  # every row pooled exactly once
        raise AssertionError(f"pooled {transform.rows} of {n} rows")
    return out


def _plan(infos: Sequence[ChunkInfo], keys: Sequence[str], per_token: bool, all_tokens_valid: bool, hidden_dtype):
    """Check files agree; return {key: (row shape, out dtype, how)} for the concatenated arrays; how: None (as
    stored), "text" (code points decoded while reading) or "pooled" (`read_pooled_hidden`)."""
    first = infos[0]
    for info in infos[1:]:
        for name in ("env_name", "obs_kind"):
            if getattr(info.meta, name) != getattr(first.meta, name):
                raise DataFileError(info.path, META_KEY, f"{name} {getattr(info.meta, name)!r} differs from "
                                                         f"{getattr(first.meta, name)!r} in {first.path}")
        diff = spec_differences(first.meta.spec_json, info.meta.spec_json)
        if diff:
            raise DataFileError(info.path, META_KEY, f"extraction spec differs from {first.path} in {diff}")
        if "return_to_go" in keys and info.meta.return_gamma != first.meta.return_gamma:
            raise DataFileError(info.path, "return_to_go", f"computed with gamma {info.meta.return_gamma}, "
                                                           f"{first.path} with {first.meta.return_gamma}: rerun `hsrl returns`")
    plan = {}
    for key in keys:
        if key not in KEYS:
            raise ValueError(f"unknown key {key!r} (known keys: {', '.join(KEYS)})")
        rows, dtypes = set(), []
        for info in infos:
            if key not in info.fields:
                raise DataFileError(info.path, key, "missing (asked for by the dataset loader)")
            shape, dtype = info.fields[key]
            rows.add(shape[1:] if dtype.kind != "U" and key not in CODE_POINT_KEYS else ())
            dtypes.append(dtype)
        how = None
        if key in CODE_POINT_KEYS:  # decoded while reading: (N,) object array of str
            plan[key] = ((), np.dtype(object), "text")
            continue
        if key == "hidden_state":
            per_token_files = [i for i in infos if len(i.fields[key][0]) == 3]
            if per_token and len(per_token_files) != len(infos):
                raise DataFileError(next(i for i in infos if len(i.fields[key][0]) == 2).path, key,
                                    "stored pooled (N, H) but per-token states were asked for")
            if per_token_files and not per_token:
                if len(per_token_files) != len(infos):
                    raise DataFileError(infos[0].path, key, "mix of per-token and pooled hidden states")
                for info in infos:  # every file, before anything is read
                    check_token_counts(info, all_tokens_valid)
                    _spec_pooling(info)
                how = "pooled"
                rows = {s[1:] for s in rows}
                dtypes = [np.dtype(np.float32)]  # what pooling gives, as labelling stores pooled states
        if len(rows) != 1:
            check_same_row_shape(infos, key)  # names the file that differs
            raise DataFileError(infos[0].path, key, f"row shapes differ across files: {sorted(rows)}")
        dtype = np.result_type(*dtypes)
        if key == "hidden_state" and hidden_dtype is not None:
            dtype = np.dtype(hidden_dtype)
        plan[key] = (rows.pop(), dtype, how)
    return plan


# manifest entries written with the cache but not compared (derived from the compared ones)
_MANIFEST_INFO = ("offsets", "meta", "pooled")


def _manifest(files: Sequence[Path], keys, per_token, all_tokens_valid, hidden_dtype) -> dict:
    stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return {"version": SCHEMA_VERSION, "files": stats, "keys": list(keys),
            "per_token": per_token, "pool": None if per_token else POOL_METHOD,
            "all_tokens_valid": bool(all_tokens_valid),
            "hidden_dtype": None if hidden_dtype is None else np.dtype(hidden_dtype).str}


def load_dataset(source: str | os.PathLike | Sequence[str | os.PathLike],
                 keys: Sequence[str] = ("obs", "action", "reward", "done"), *,
                 per_token: bool = False, all_tokens_valid: bool = False,
                 hidden_dtype=None, cache_dir: str | os.PathLike | None = None,
                 show_progress: bool = True) -> Dataset:
    """Load `keys` of a folder (or list) of chunks for training, reading each array once per file.

    npz members are deflate-compressed, so they cannot be memory-mapped. Instead: (1) the headers of
    every file are read first (no data decompressed) to validate them and size the result; (2) one
    array per key is preallocated for the whole dataset; (3) each file is opened once and each member
    is decompressed straight into its rows of that array (1 MiB steps). Peak memory is the size of the
    requested arrays plus one step, never a second copy. Only `keys` are read: leave out `next_obs`
    or `hidden_state` when training does not need them.

    Per-token hidden states (N, T, H) are read pooled, (N, H) float32, by `read_pooled_hidden` (each row over its
    `hidden_tokens` valid positions, as labelling pools; block by block, never the whole (N, T, H) array);
    files without `hidden_tokens` are refused unless `all_tokens_valid` (every position is a token).
    `per_token=True` loads them as they are (add "hidden_tokens" to `keys` for the counts).
    `hidden_dtype` casts hidden states while reading (e.g. float16 -> float32).

    With `cache_dir`, the concatenated arrays are written there as plain `.npy` files (plus a
    `manifest.json` naming the source files, sizes and mtimes, the options, and whether hidden_state was pooled)
    and returned memory-mapped read-only; a later call with unchanged files and the same options maps the cache
    without decompressing anything. Use it when the dataset is larger than memory or read by several processes.
    """
    files = _source_files(source)
    keys = list(dict.fromkeys(keys))
    manifest = _manifest(files, keys, per_token, all_tokens_valid, hidden_dtype) if cache_dir is not None else None
    if cache_dir is not None:
        cached = _open_cache(Path(cache_dir), manifest)
        if cached is not None:
            return cached
    infos = [inspect_chunk(p) for p in files]
    plan = _plan(infos, keys, per_token, all_tokens_valid, hidden_dtype)
    if cache_dir is not None and any(dtype.hasobject for _, dtype, _ in plan.values()):
        raise ValueError(f"{', '.join(k for k, (_, d, _) in plan.items() if d.hasobject)}: variable-length text "
                         f"cannot be cached memory-mapped; load it without cache_dir")
    offsets = np.cumsum([0] + [i.num_rows for i in infos]).astype(np.int64)
    total = int(offsets[-1])
    if cache_dir is not None:
        cache = Path(cache_dir)
        cache.mkdir(parents=True, exist_ok=True)
        (cache / "manifest.json").unlink(missing_ok=True)  # invalid until rebuilt
        out = {k: np.lib.format.open_memmap(cache / f"{k}.npy.tmp", mode="w+", dtype=dt, shape=(total,) + row)
               for k, (row, dt, _) in plan.items()}
    else:
        out = {k: np.empty((total,) + row, dt) for k, (row, dt, _) in plan.items()}
    try:
        for i, path in enumerate(progress(files, "load", show_progress)):
            with ChunkReader(path) as reader:
                if reader.info.fields != infos[i].fields or reader.info.meta != infos[i].meta:
                    raise DataFileError(path, None, "file changed while the dataset was loading")
                for k, (_, _, how) in plan.items():
                    rows = out[k][offsets[i]:offsets[i + 1]]
                    if how == "pooled":
                        read_pooled_hidden(reader, rows, all_tokens_valid=all_tokens_valid)
                    else:
                        reader.read(k, rows, decode_text if how == "text" else None)
    except BaseException:
        if cache_dir is not None:
            out.clear()
            for k in plan:
                (cache / f"{k}.npy.tmp").unlink(missing_ok=True)
        raise
    meta = infos[0].meta
    if cache_dir is not None:
        for arr in out.values():
            arr.flush()
        out.clear()
        for k in plan:
            os.replace(cache / f"{k}.npy.tmp", cache / f"{k}.npy")
        manifest["offsets"] = offsets.tolist()
        manifest["meta"] = meta.to_json()
        manifest["pooled"] = [k for k, (_, _, how) in plan.items() if how == "pooled"]
        write_text_atomic(cache / "manifest.json", json.dumps(manifest))
        return _open_cache(cache, {k: v for k, v in manifest.items() if k not in _MANIFEST_INFO})
    return Dataset(out, meta, tuple(files), offsets)


def _open_cache(cache: Path, manifest: dict) -> Dataset | None:
    try:
        stored = json.loads((cache / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if {k: v for k, v in stored.items() if k not in _MANIFEST_INFO} != json.loads(json.dumps(manifest)):
        return None
    try:
        arrays = {k: np.load(cache / f"{k}.npy", mmap_mode="r", allow_pickle=False) for k in stored["keys"]}
    except FileNotFoundError:
        return None
    files = tuple(Path(name) for name, _, _ in stored["files"])
    return Dataset(arrays, ChunkMeta.from_json(stored["meta"], cache / "manifest.json"), files,
                   np.asarray(stored["offsets"], np.int64))
