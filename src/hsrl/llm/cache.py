"""A content-addressed cache of extracted hidden states: never compute a state twice.

Under one extraction spec the same model input gives the same result (sampling is seeded from the spec and the
sample's key), so a state is stored under

    key = hash(spec hash, layers asked, hash of the exact model input)

where the model input is the prompt's token ids (plus the image bytes for specs that read images) and, for
generation specs, the sample's sampling key. The value is the pooled state of each layer asked, and for generation
specs the generated ids and text, with the token counts an `ExtractionResult` carries.

Two levels:
  - memory: a dict within one run (least recently used entries dropped past `memory_bytes`);
  - disk (optional, `--cache DIR`): an LMDB environment (the `lmdb` package), shared across runs and processes.
    LMDB gives concurrent readers and serialised writers across processes; a reader sees only committed
    transactions, so it never reads a half-written entry.

Every stored value carries a checksum and the spec hash, input hash and layers it was computed for; a value that
fails any check (bad checksum, another spec's or input's entry, a shape that is not this model's) is counted as
`rejected`, never used, recomputed and overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAGIC = b"HSC1"
_DIGEST = 16  # bytes of the blake2b checksum of each stored value
DEFAULT_MEMORY_BYTES = 1 << 30
DEFAULT_MAP_SIZE = 1 << 36  # LMDB's address-space reservation (64 GiB); the file grows only as entries are written


@dataclass
class CachedState:
    """One sample's cached extraction: pooled states of the layers asked, and its generation (if any)."""

    hidden: np.ndarray  # (L, H) float32, layers in the order of the key's layers
    generated_ids: list[int] = field(default_factory=list)
    generated_text: str = ""
    num_tokens: int = 0
    prompt_tokens: int = 0
    finished: bool = False

    @property
    def nbytes(self) -> int:
        return int(self.hidden.nbytes) + 8 * len(self.generated_ids) + len(self.generated_text) + 64


def input_hash(row, image: np.ndarray | None = None, sample_key: int | None = None) -> str:
    """Hash of the exact model input: the prompt's token ids, the image bytes (image specs), the sampling key."""
    h = hashlib.blake2b(digest_size=20)
    h.update(np.asarray(row, dtype=np.int64).tobytes())
    if image is not None:
        image = np.ascontiguousarray(image)
        h.update(f"|image{image.shape}{image.dtype}|".encode())
        h.update(image.tobytes())
    if sample_key is not None:
        h.update(f"|key{int(sample_key)}".encode())
    return h.hexdigest()


def entry_key(spec_hash: str, layers: tuple[int, ...], input_digest: str) -> bytes:
    return f"{spec_hash}|{','.join(map(str, layers))}|{input_digest}".encode()


def encode_value(key: bytes, state: CachedState) -> bytes:
    """magic | checksum(header + payload) | header length | header JSON | float32 states."""
    hidden = np.ascontiguousarray(state.hidden, dtype=np.float32)
    header = json.dumps({"key": key.decode(), "shape": list(hidden.shape), "ids": [int(i) for i in state.generated_ids],
                         "text": state.generated_text, "num_tokens": int(state.num_tokens),
                         "prompt_tokens": int(state.prompt_tokens), "finished": bool(state.finished)}).encode()
    body = struct.pack("<I", len(header)) + header + hidden.tobytes()
    return MAGIC + hashlib.blake2b(body, digest_size=_DIGEST).digest() + body


def decode_value(key: bytes, value: bytes, shape: tuple[int, int]) -> CachedState | None:
    """The entry stored in `value`, or None if it is corrupt or not this key's (another spec's, input's, shape)."""
    try:
        if value[:4] != MAGIC or len(value) < 4 + _DIGEST + 4:
            return None
        body = value[4 + _DIGEST :]
        if hashlib.blake2b(body, digest_size=_DIGEST).digest() != value[4 : 4 + _DIGEST]:
            return None
        (n,) = struct.unpack("<I", body[:4])
        header = json.loads(body[4 : 4 + n])
        if header["key"] != key.decode() or tuple(header["shape"]) != tuple(shape):
            return None
        hidden = np.frombuffer(body[4 + n :], dtype=np.float32)
        if hidden.size != shape[0] * shape[1] or not np.isfinite(hidden).all():
            return None
        return CachedState(hidden.reshape(shape).copy(), list(header["ids"]), str(header["text"]),
                           int(header["num_tokens"]), int(header["prompt_tokens"]), bool(header["finished"]))
    except (ValueError, KeyError, TypeError, struct.error, UnicodeDecodeError):
        return None


_ENVS: dict[str, object] = {}  # LMDB allows one open environment per path per process
_ENVS_LOCK = threading.Lock()


def _open_lmdb(path: Path, map_size: int):
    import lmdb

    real = str(path.resolve())
    with _ENVS_LOCK:
        if real not in _ENVS:
            path.mkdir(parents=True, exist_ok=True)
            _ENVS[real] = lmdb.open(real, map_size=map_size, max_readers=512, readahead=False, meminit=False)
        return _ENVS[real]


class StateCache:
    """Memory (and optionally LMDB on disk) cache of `CachedState`s by `entry_key`. Thread-safe.

    Counts `hits`, `misses` and `rejected` (entries found but failing their checks); `hit_rate` is
    hits / (hits + misses) over every lookup so far: the share of samples not computed (a duplicate within
    one batch, computed once, counts as a hit).
    """

    def __init__(self, path: str | os.PathLike | None = None, memory_bytes: int = DEFAULT_MEMORY_BYTES,
                 map_size: int = DEFAULT_MAP_SIZE):
        self.path = None if path is None else Path(path)
        if self.path is not None and self.path.exists() and not self.path.is_dir():
            raise NotADirectoryError(f"--cache {self.path}: not a directory")
        self._env = None if self.path is None else _open_lmdb(self.path, map_size)
        self.memory_bytes = int(memory_bytes)
        self._memory: OrderedDict[bytes, CachedState] = OrderedDict()
        self._memory_used = 0
        self._lock = threading.Lock()
        self.hits = self.misses = self.rejected = 0

    def __repr__(self) -> str:
        return f"StateCache(path={self.path}, entries in memory={len(self._memory)}, hits={self.hits}, misses={self.misses})"

    @property
    def hit_rate(self) -> float:
        asked = self.hits + self.misses
        return self.hits / asked if asked else 0.0

    def counts(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "rejected": self.rejected}

    def get_many(self, keys: list[bytes], shape: tuple[int, int]) -> list[CachedState | None]:
        """The cached state of each key (None where absent or rejected); counts hits and misses."""
        out: list[CachedState | None] = [None] * len(keys)
        with self._lock:
            for i, k in enumerate(keys):
                state = self._memory.get(k)
                if state is not None and state.hidden.shape == tuple(shape):
                    self._memory.move_to_end(k)
                    out[i] = state
        missing = [i for i, s in enumerate(out) if s is None]
        if missing and self._env is not None:
            with self._env.begin(buffers=False) as txn:
                for i in missing:
                    value = txn.get(keys[i])
                    if value is None:
                        continue
                    state = decode_value(keys[i], value, shape)
                    if state is None:
                        self.rejected += 1
                        continue
                    out[i] = state
                    self._remember(keys[i], state)
        found = sum(s is not None for s in out)
        self.hits += found
        self.misses += len(keys) - found
        return out

    def count_duplicates(self, n: int) -> None:
        """n samples missed but computed by another sample of their batch: hits after all (not computed)."""
        self.hits += n
        self.misses -= n

    def put_many(self, items: list[tuple[bytes, CachedState]]) -> None:
        """Store entries in memory and (one transaction) on disk."""
        for k, state in items:
            self._remember(k, state)
        if self._env is None or not items:
            return
        import lmdb

        values = [(k, encode_value(k, s)) for k, s in items]
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    for k, v in values:
                        txn.put(k, v)
                return
            except lmdb.MapFullError:  # grow the reservation and retry the whole transaction
                self._env.set_mapsize(self._env.info()["map_size"] * 2)

    def _remember(self, key: bytes, state: CachedState) -> None:
        with self._lock:
            old = self._memory.pop(key, None)
            if old is not None:
                self._memory_used -= old.nbytes
            self._memory[key] = state
            self._memory_used += state.nbytes
            while self._memory_used > self.memory_bytes and len(self._memory) > 1:
                _, dropped = self._memory.popitem(last=False)
                self._memory_used -= dropped.nbytes
