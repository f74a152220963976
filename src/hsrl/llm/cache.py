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

The cache is an optimisation: it never stops or crashes a run. LMDB maps its file, and a page read past the end of
a truncated file kills the process (SIGBUS), so the file is checked before it is mapped (`check_lmdb_file`: LMDB's
meta pages against the file's size, then each B-tree walked with plain reads). A damaged folder is moved aside
(DIR.damaged-<time>) and a fresh cache made; an error while reading or writing (a damaged page, a full disk or map)
turns the disk level off for the rest of the run. Either way one `CacheWarning` line, and the states are computed.

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
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAGIC = b"HSC1"
_DIGEST = 16  # bytes of the blake2b checksum of each stored value
DEFAULT_MEMORY_BYTES = 1 << 30
DEFAULT_MAP_SIZE = 1 << 36  # LMDB's address-space reservation (64 GiB); the file grows only as entries are written
DEFAULT_MAX_MAP_SIZE = 1 << 42  # grown (doubling) up to this on MapFullError; past it the disk cache turns off


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


_ENVS: dict[str, "_Disk"] = {}  # LMDB allows one open environment per path per process
_ENVS_LOCK = threading.Lock()


class CacheWarning(UserWarning):
    """The disk cache was damaged, full or failing: moved aside or turned off; the run goes on computing states."""


class DamagedCache(Exception):
    """An LMDB data file that is not safe to map (`check_lmdb_file`)."""


# LMDB's file layout (lmdb.h / mdb.c, data version 1, 64-bit): a page begins with a 16-byte header
# (pgno u64, pad u16, flags u16, lower u16, upper u16; an overflow page holds its page count u32 at offset 12);
# pages 0 and 1 are meta pages: magic, version, address, map size, the free and the main database's records
# (pad u32 [the page size in the free DB's], flags u16, depth u16, branch, leaf, overflow pages, entries, root),
# the last page used and the transaction id.
_LMDB_MAGIC = 0xBEEFC0DE
_LMDB_VERSION = 1
_PAGE_HEADER = struct.Struct("<QHHHH")
_META = struct.Struct("<IIQQ" + "IHHQQQQQ" * 2 + "QQ")
_NODE = struct.Struct("<HHHH")
_P_BRANCH, _P_LEAF, _P_OVERFLOW, _P_META = 0x01, 0x02, 0x04, 0x08
_P_MEMORY_ONLY = 0x10 | 0x4000 | 0x8000  # P_DIRTY, P_LOOSE, P_KEEP: in-memory marks, ignored
_F_BIGDATA, _F_SUBDATA, _F_DUPDATA = 0x01, 0x02, 0x04
_MDB_INTEGERKEY = 0x08
_P_INVALID = (1 << 64) - 1
_MAX_DEPTH = 32  # LMDB's cursor stack


@dataclass
class _Meta:
    txnid: int
    last_pg: int
    psize: int
    dbs: tuple  # (free, main): (flags, depth, root)


def _read_metas(f, size: int) -> list[_Meta]:
    """Both meta pages of an LMDB data file, checked as LMDB checks them at open (and a little more)."""
    head = os.pread(f, 16 + _META.size, 0)
    if len(head) < 16 + _META.size:
        raise DamagedCache(f"{size} bytes, shorter than LMDB's meta pages")
    psize = _META.unpack_from(head, 16)[4]
    if psize < 512 or psize > 65536 or psize & (psize - 1):
        raise DamagedCache(f"meta page 0 gives page size {psize}")
    if size < 2 * psize:
        raise DamagedCache(f"{size} bytes, shorter than LMDB's two meta pages of {psize} bytes")
    metas = []
    for n in (0, 1):
        raw = os.pread(f, 16 + _META.size, n * psize)
        pgno, _, flags, _, _ = _PAGE_HEADER.unpack_from(raw)
        m = _META.unpack_from(raw, 16)
        magic, version, last_pg, txnid = m[0], m[1], m[-2], m[-1]
        if magic != _LMDB_MAGIC or not flags & _P_META or pgno != n:
            raise DamagedCache(f"meta page {n} is damaged (magic {magic:#x}, flags {flags:#x}, page {pgno})")
        if version != _LMDB_VERSION:
            raise DamagedCache(f"meta page {n} gives LMDB data version {version}, not {_LMDB_VERSION}")
        free, main = m[4:12], m[12:20]
        if free[1] != _MDB_INTEGERKEY or main[1] != 0:
            raise DamagedCache(f"meta page {n} gives database flags {free[1]:#x}, {main[1]:#x}")
        if n == 1 and free[0] != psize:
            raise DamagedCache(f"meta page 1 gives page size {free[0]}, meta page 0 {psize}")
        if last_pg < 1 or (last_pg + 1) * psize > size:
            raise DamagedCache(f"{size} bytes, shorter than the {(last_pg + 1) * psize} bytes its meta page {n} "
                               f"says are used (truncated?)")
        metas.append(_Meta(txnid, last_pg, psize, tuple((db[1], db[2], db[7]) for db in (free, main))))
    return metas


def _walk(f, size: int, meta: _Meta, db: int) -> None:
    """Read one B-tree of `meta` page by page (pread, never the map): every page, node, key, value and overflow
    run it points to lies inside the file's used pages, each page is where and what its parent says, no page is
    reached twice and every leaf lies at the database's depth; the free database's page lists name pages in range."""
    psize, npages = meta.psize, meta.last_pg + 1
    _, depth, root = meta.dbs[db]
    if root == _P_INVALID:
        return
    if depth < 1 or depth > _MAX_DEPTH:
        raise DamagedCache(f"database {db} has depth {depth}")
    seen: set[int] = set()
    stack = [(root, 1)]
    while stack:
        pg, level = stack.pop()
        if pg < 2 or pg >= npages or pg in seen:
            raise DamagedCache(f"a branch points to page {pg} (used pages 2..{npages - 1}{', seen before' if pg in seen else ''})")
        seen.add(pg)
        page = os.pread(f, psize, pg * psize)
        pgno, _, flags, lower, upper = _PAGE_HEADER.unpack_from(page)
        kind = flags & ~_P_MEMORY_ONLY
        want = _P_LEAF if level == depth else _P_BRANCH
        if pgno != pg or kind != want or not 16 <= lower <= upper <= psize or lower % 2:
            raise DamagedCache(f"page {pg} is damaged (page {pgno}, flags {flags:#x}, bounds {lower}..{upper})")
        n = (lower - 16) // 2
        if kind == _P_BRANCH and n < 1:
            raise DamagedCache(f"branch page {pg} is empty")
        for ptr in struct.unpack_from(f"<{n}H", page, 16):
            if ptr < upper or ptr + _NODE.size > psize:
                raise DamagedCache(f"page {pg} has a node at offset {ptr}, outside {upper}..{psize}")
            lo, hi, nflags, ksize = _NODE.unpack_from(page, ptr)
            data = ptr + _NODE.size + ksize
            if data > psize:
                raise DamagedCache(f"page {pg} has a key of {ksize} bytes past the page's end")
            if kind == _P_BRANCH:
                stack.append((lo | hi << 16 | nflags << 32, level + 1))
                continue
            dsize = lo | hi << 16
            if nflags & (_F_SUBDATA | _F_DUPDATA) or nflags & ~_F_BIGDATA:
                raise DamagedCache(f"page {pg} has a node with flags {nflags:#x}")
            if nflags & _F_BIGDATA:
                if data + 8 > psize:
                    raise DamagedCache(f"page {pg} has an overflow pointer past the page's end")
                (ov,) = struct.unpack_from("<Q", page, data)
                need = (dsize + 16 + psize - 1) // psize
                if ov < 2 or ov + need > npages:
                    raise DamagedCache(f"page {pg} points to {need} overflow pages at {ov}, past the used pages")
                head = os.pread(f, 16, ov * psize)
                ovno, _, ovflags = struct.unpack_from("<QHH", head)
                (count,) = struct.unpack_from("<I", head, 12)
                if ovno != ov or ovflags & ~_P_MEMORY_ONLY != _P_OVERFLOW or count < need or ov + count > npages:
                    raise DamagedCache(f"overflow page {ov} is damaged (page {ovno}, flags {ovflags:#x}, {count} pages)")
                value = os.pread(f, dsize, ov * psize + 16) if db == 0 else b""
            else:
                if data + dsize > psize:
                    raise DamagedCache(f"page {pg} has a value of {dsize} bytes past the page's end")
                value = page[data : data + dsize] if db == 0 else b""
            if db == 0:  # a free list: count, then that many page numbers
                if dsize % 8 or dsize < 8:
                    raise DamagedCache(f"a free list of {dsize} bytes")
                ids = struct.unpack(f"<{dsize // 8}Q", value)
                if ids[0] != len(ids) - 1 or any(i < 2 or i >= npages for i in ids[1:]):
                    raise DamagedCache("a free list names pages outside the used pages")


def check_lmdb_file(data_file: str | os.PathLike, walk: bool = True) -> None:
    """Refuse (`DamagedCache`, saying why) an LMDB data file it is not safe to map: reading a page past the end of
    a mapped file kills the process (SIGBUS), and a damaged page makes LMDB fail or follow it anywhere. Checks the
    meta pages and the file's size against them (a truncated file), then (`walk`) the newest snapshot's trees. Reads
    with pread only. A missing or empty file is fine (LMDB makes a new one). Call it while holding a read
    transaction on the environment if other processes may write (so the pages walked cannot be reused meanwhile)."""
    try:
        f = os.open(data_file, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        size = os.fstat(f).st_size
        if size == 0:
            return
        meta = max(_read_metas(f, size), key=lambda m: m.txnid)
        for db in (1, 0) if walk else ():
            _walk(f, size, meta, db)
    except (struct.error, OverflowError) as err:
        raise DamagedCache(f"unreadable ({err})") from None
    finally:
        os.close(f)


def _damaged_name(path: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside, n = path.with_name(f"{path.name}.damaged-{stamp}"), 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    return aside


class _Disk:
    """The LMDB environment of one cache folder, shared by every `StateCache` on it in this process. Opening checks
    the data file before LMDB maps it (`check_lmdb_file`): a damaged cache is moved aside and a fresh one made. The
    first error of a read or write turns the disk level off for the rest of the run (`env` None). Either way one
    `CacheWarning`, and the run goes on computing the states it does not find."""

    def __init__(self, path: Path, map_size: int, max_map_size: int):
        self.path, self.max_map_size = path, max(int(max_map_size), int(map_size))
        self.lock = threading.Lock()
        self.env = None
        self.error: str | None = None  # why the disk level is off (None while on)
        problem = self._try_open(map_size)
        if problem is None:
            return
        reason, damaged = problem
        if not damaged:
            return self._off(f"cannot be opened ({reason})")
        moved = self._move_aside()
        if isinstance(moved, str):
            return self._off(f"is damaged ({reason}) and could not be moved aside ({moved})")
        fresh = self._try_open(map_size)
        if fresh is not None:
            return self._off(f"is damaged ({reason}); moved to {moved.name}, but a fresh cache cannot be opened "
                             f"({fresh[0]})")
        _warn(f"state cache {self.path} is damaged ({reason}); moved to {moved} and started a fresh cache")

    def _try_open(self, map_size: int):
        """Open the folder's environment into `self.env`; None, or (why not, whether the files are damaged)."""
        import lmdb

        data = self.path / "data.mdb"
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._inode = _inode(data)
            try:
                check_lmdb_file(data, walk=False)  # meta pages and size first: LMDB maps no truncated file
            except DamagedCache:
                time.sleep(0.2)  # a meta page read while another process wrote it: look once more
                check_lmdb_file(data, walk=False)
            env = lmdb.open(str(self.path), map_size=map_size, max_readers=512, readahead=False, meminit=False)
            try:
                with env.begin():  # pins this snapshot (and later ones): no page walked is reused meanwhile
                    check_lmdb_file(data)
            except BaseException:
                env.close()
                raise
        except DamagedCache as err:
            return str(err), True
        except (lmdb.InvalidError, lmdb.VersionMismatchError, lmdb.CorruptedError, lmdb.PageNotFoundError) as err:
            return f"{type(err).__name__}: {err}", True
        except (lmdb.Error, OSError) as err:
            return f"{type(err).__name__}: {err}", False
        self.env, self._inode = env, _inode(data)  # the file LMDB made or opened
        return None

    def _move_aside(self) -> Path | str:
        """Rename the folder to FOLDER.damaged-<time> (unless another process already replaced it): the new name,
        or why it failed."""
        try:
            if _inode(self.path / "data.mdb") != self._inode:
                raise OSError("another process replaced it meanwhile")
            aside = _damaged_name(self.path)
            self.path.rename(aside)
            return aside
        except OSError as err:
            return str(err)

    def _off(self, why: str) -> None:
        self.env, self.error = None, why
        _warn(f"state cache {self.path} {why}; running without the disk cache (states are computed instead)")

    def fail(self, err: Exception, doing: str) -> None:
        """An error while `doing` (reading, writing): the disk level is off from now on, one warning per folder;
        a damaged file is also moved aside, so the next run starts a fresh cache."""
        import lmdb

        with self.lock:
            if self.env is None:
                return
            self.env = None
        why = f"failed {doing} ({type(err).__name__}: {err})"
        if isinstance(err, (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.InvalidError, lmdb.BadValsizeError)):
            moved = self._move_aside()
            why += f"; moved to {moved}" if isinstance(moved, Path) else f"; could not move it aside ({moved})"
            with _ENVS_LOCK:  # a later cache on this folder in this process starts fresh
                if _ENVS.get(str(self.path)) is self:
                    del _ENVS[str(self.path)]
        self._off(why)


def _inode(path: Path):
    try:
        st = os.stat(path)
        return st.st_dev, st.st_ino
    except FileNotFoundError:
        return None


def _warn(message: str) -> None:
    """One line on stderr ("hsrl:0: CacheWarning: ..."), no source line; once per folder (callers see to that)."""
    warnings.warn_explicit(message, CacheWarning, filename="hsrl", lineno=0, module="hsrl.llm.cache")


def _disk(path: Path, map_size: int, max_map_size: int = DEFAULT_MAX_MAP_SIZE) -> _Disk:
    real = str(path.resolve())
    with _ENVS_LOCK:
        if real not in _ENVS:
            _ENVS[real] = _Disk(Path(real), map_size, max_map_size)
        return _ENVS[real]


def _open_lmdb(path: Path, map_size: int):
    """The folder's LMDB environment (None when the disk cache is off)."""
    return _disk(path, map_size).env


class StateCache:
    """Memory (and optionally LMDB on disk) cache of `CachedState`s by `entry_key`. Thread-safe.

    Counts `hits`, `misses` and `rejected` (entries found but failing their checks); `hit_rate` is
    hits / (hits + misses) over every lookup so far: the share of samples not computed (a duplicate within
    one batch, computed once, counts as a hit).
    """

    def __init__(self, path: str | os.PathLike | None = None, memory_bytes: int = DEFAULT_MEMORY_BYTES,
                 map_size: int = DEFAULT_MAP_SIZE, max_map_size: int = DEFAULT_MAX_MAP_SIZE):
        self.path = None if path is None else Path(path)
        if self.path is not None and self.path.exists() and not self.path.is_dir():
            raise NotADirectoryError(f"--cache {self.path}: not a directory")
        self._disk = None if self.path is None else _disk(self.path, map_size, max_map_size)
        self.memory_bytes = int(memory_bytes)
        self._memory: OrderedDict[bytes, CachedState] = OrderedDict()
        self._memory_used = 0
        self._lock = threading.Lock()
        self.hits = self.misses = self.rejected = 0

    @property
    def _env(self):
        """The LMDB environment, or None: no `--cache DIR`, or the disk cache turned off (damaged, full, failing)."""
        return None if self._disk is None else self._disk.env

    @property
    def disk_error(self) -> str | None:
        """Why the disk level is off (a damaged or unopenable folder, a failed read or write), or None."""
        return None if self._disk is None else self._disk.error

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
        env = self._env
        if missing and env is not None:
            import lmdb

            try:
                with env.begin(buffers=False) as txn:
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
            except (lmdb.Error, OSError) as err:  # what was read stays valid (checked); the rest are misses
                self._disk.fail(err, "reading")
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
        env = self._env
        if env is None or not items:
            return
        import lmdb

        values = [(k, encode_value(k, s)) for k, s in items]
        try:
            while True:
                try:
                    with env.begin(write=True) as txn:
                        for k, v in values:
                            txn.put(k, v)
                    return
                except lmdb.MapFullError:  # grow the reservation (up to max_map_size) and retry the transaction
                    grown = env.info()["map_size"] * 2
                    if grown > self._disk.max_map_size:
                        raise
                    env.set_mapsize(grown)
        except (lmdb.Error, OSError) as err:  # a full disk or map, a damaged file: the run goes on without it
            self._disk.fail(err, "writing")

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
