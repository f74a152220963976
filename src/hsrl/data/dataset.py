"""Dataset loading: many chunk files concatenated into one array per key, optionally cached memory-mapped.

The chunk format (keys, validation, reading one file) is `hsrl.data.chunks`; this module only plans and fills the
concatenated arrays and keeps the `.npy` cache.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hsrl.atomic import write_text_atomic
from hsrl.data.chunks import (
    CODE_POINT_KEYS, KEYS, META_KEY, SCHEMA_VERSION, ChunkInfo, ChunkMeta, ChunkReader, DataFileError, decode_text,
    check_same_row_shape, inspect_chunk, list_chunks, progress,
)
from hsrl.llm.spec import spec_differences
from hsrl.pixels import uint8_to_pixels


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


def _plan(infos: Sequence[ChunkInfo], keys: Sequence[str], per_token: bool, pool, hidden_dtype):
    """Check files agree; return {key: (row shape, out dtype, transform)} for the concatenated arrays."""
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
        transform = None
        if key in CODE_POINT_KEYS:  # decoded while reading: (N,) object array of str
            plan[key] = ((), np.dtype(object), decode_text)
            continue
        if key == "hidden_state":
            per_token_files = [i for i in infos if len(i.fields[key][0]) == 3]
            if per_token and len(per_token_files) != len(infos):
                raise DataFileError(next(i for i in infos if len(i.fields[key][0]) == 2).path, key,
                                    "stored pooled (N, H) but per-token states were asked for")
            if per_token_files and not per_token:
                if pool is None:
                    i = per_token_files[0]
                    raise DataFileError(i.path, key, f"stored per-token {i.fields[key][0]}; pass a `pool` function "
                                                     "or per_token=True to load (N, T, H)")
                if len(per_token_files) != len(infos):
                    raise DataFileError(infos[0].path, key, "mix of per-token and pooled hidden states")
                transform = pool
                rows = {s[1:] for s in rows}
        if len(rows) != 1:
            check_same_row_shape(infos, key)  # names the file that differs
            raise DataFileError(infos[0].path, key, f"row shapes differ across files: {sorted(rows)}")
        dtype = np.result_type(*dtypes)
        if key == "hidden_state" and hidden_dtype is not None:
            dtype = np.dtype(hidden_dtype)
        plan[key] = (rows.pop(), dtype, transform)
    return plan


def _manifest(files: Sequence[Path], keys, per_token, pool, hidden_dtype) -> dict:
    stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return {"version": SCHEMA_VERSION, "files": stats, "keys": list(keys),
            "per_token": per_token, "pool": getattr(pool, "__qualname__", repr(pool)) if pool else None,
            "hidden_dtype": None if hidden_dtype is None else np.dtype(hidden_dtype).str}


def load_dataset(source: str | os.PathLike | Sequence[str | os.PathLike],
                 keys: Sequence[str] = ("obs", "action", "reward", "done"), *,
                 per_token: bool = False, pool: Callable[[np.ndarray], np.ndarray] | None = None,
                 hidden_dtype=None, cache_dir: str | os.PathLike | None = None,
                 show_progress: bool = True) -> Dataset:
    """Load `keys` of a folder (or list) of chunks for training, reading each array once per file.

    npz members are deflate-compressed, so they cannot be memory-mapped. Instead: (1) the headers of
    every file are read first (no data decompressed) to validate them and size the result; (2) one
    array per key is preallocated for the whole dataset; (3) each file is opened once and each member
    is decompressed straight into its rows of that array (1 MiB steps). Peak memory is the size of the
    requested arrays plus one step, never a second copy. Only `keys` are read: leave out `next_obs`
    or `hidden_state` when training does not need them.

    Per-token hidden states (N, T, H) are refused unless `per_token=True` (load them as they are) or a
    `pool` function maps a block (b, T, H) -> (b, H) while reading (pass hsrl.llm's pooling: there is one).
    `hidden_dtype` casts hidden states while reading (e.g. float16 -> float32).

    With `cache_dir`, the concatenated arrays are written there as plain `.npy` files (plus a
    `manifest.json` naming the source files, sizes and mtimes) and returned memory-mapped read-only; a
    later call with unchanged files and the same options maps the cache without decompressing anything.
    Use it when the dataset is larger than memory or read by several processes.
    """
    files = list_chunks(source) if isinstance(source, (str, os.PathLike)) and Path(source).is_dir() \
        else [Path(p) for p in ([source] if isinstance(source, (str, os.PathLike)) else source)]
    if not files:
        raise ValueError("no chunk files given")
    keys = list(dict.fromkeys(keys))
    manifest = _manifest(files, keys, per_token, pool, hidden_dtype) if cache_dir is not None else None
    if cache_dir is not None:
        cached = _open_cache(Path(cache_dir), manifest)
        if cached is not None:
            return cached
    infos = [inspect_chunk(p) for p in files]
    plan = _plan(infos, keys, per_token, pool, hidden_dtype)
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
                for k, (_, _, transform) in plan.items():
                    reader.read(k, out[k][offsets[i]:offsets[i + 1]], transform)
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
        write_text_atomic(cache / "manifest.json", json.dumps(manifest))
        return _open_cache(cache, {k: v for k, v in manifest.items() if k not in ("offsets", "meta")})
    return Dataset(out, meta, tuple(files), offsets)


def _open_cache(cache: Path, manifest: dict) -> Dataset | None:
    try:
        stored = json.loads((cache / "manifest.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if {k: v for k, v in stored.items() if k not in ("offsets", "meta")} != json.loads(json.dumps(manifest)):
        return None
    try:
        arrays = {k: np.load(cache / f"{k}.npy", mmap_mode="r", allow_pickle=False) for k in stored["keys"]}
    except FileNotFoundError:
        return None
    files = tuple(Path(name) for name, _, _ in stored["files"])
    return Dataset(arrays, ChunkMeta.from_json(stored["meta"], cache / "manifest.json"), files,
                   np.asarray(stored["offsets"], np.int64))
