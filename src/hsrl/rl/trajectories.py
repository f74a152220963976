"""`hsrl online --save-trajectories DIR`: the rollouts an online run acts on, written as hsrl chunk files.

Each saved update's rollout is one chunk, `chunk_NNNNNN.npz` with N = update // every, in the format `hsrl collect`
writes (rows time-major, `row = t * num_envs + env`): obs, next_obs (the true next observation, before any reset),
action, reward, done, achievements, `log_prob` of the acting policy, and `hidden_state`, the raw pooled state the
policy read at that step (as `LiveHidden` gave it, before normalisation), with the run's extraction spec in the
metadata. A control run (its input is a projection, not the LLM's) and a run without hidden states write no
`hidden_state`. Saving every update gives consecutive chunks; `--save-trajectories-every N` keeps one update in N,
and each chunk is then a segment of its own (`ChunkMeta.segment`): returns end at the gaps.
`hsrl returns`, `train-awr` and `experiment --offline` read the folder as it is.

Writes run on one background thread (compression releases the GIL), one chunk at a time, atomically; the loop waits
for the last one before it saves a checkpoint, so a checkpoint never names data that is not on disk. On resume the
chunks of updates after the checkpoint are deleted (the resumed run writes them again, the same rows and values), and
a folder holding chunks that another run wrote (another run folder, or this one with other settings) is refused. A
disk budget (`--save-trajectories-max-gb`, and free space for two more chunks) stops saving with one warning instead
of filling the disk; so does a write that fails for lack of space. The training goes on either way. Why saving
stopped is part of the checkpoint (`state_dict`): a resumed run keeps it stopped in that folder (saving again would
leave a gap inside a segment, which `hsrl returns` refuses); the counts (bytes, chunks, the last chunk's size) are
read back from the folder.
"""

from __future__ import annotations

import shutil
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from hsrl.atomic import remove_temporaries
from hsrl.data.chunks import CHUNK_PATTERN, ChunkMeta, DataFileError, chunk_path, read_meta, write_chunk
from hsrl.errors import InputError

SOURCE = "hsrl online"


class TrajectoryWriter:
    """Writes an online run's rollouts into `directory` (see the module doc)."""

    def __init__(self, directory: str | Path, *, run_dir: Path, env_info, num_envs: int, num_steps: int,
                 every: int, max_gb: float, spec_json: str | None, seed: int, settings: str | None = None):
        self.directory = Path(directory)
        self.run = str(Path(run_dir).resolve())
        self.settings = settings  # a hash of the settings that make the run's numbers (`hsrl.rl.resume.settings_hash`)
        self.info, self.num_envs, self.num_steps, self.every = env_info, num_envs, num_steps, every
        self.budget = max_gb * 1e9
        self.spec_json, self.seed = spec_json, seed
        self.used = 0  # bytes of this run's chunks in the folder
        self.last_size: int | None = None
        self.stopped: str | None = None  # why saving stopped, once it has
        self.written = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hsrl-trajectories")
        self._pending: Future | None = None

    def prepare(self, resume_update: int, state: dict | None = None) -> None:
        """Before the first update: refuse a folder holding chunks of another run, delete this run's chunks of
        updates from `resume_update` on (they are written again), count those kept (bytes, chunks, the newest's
        size), and take back from `state` (the checkpoint's `state_dict`, None on a fresh start) why saving had
        stopped, where that was this folder."""
        self.directory.mkdir(parents=True, exist_ok=True)
        remove_temporaries(self.directory, "chunk_*.npz")
        mine = []  # (update, path) of every chunk, all checked before any is deleted
        for path in sorted(self.directory.iterdir()):
            if not CHUNK_PATTERN.match(path.name):
                continue
            try:
                meta = read_meta(path)
            except DataFileError:
                meta = None
            extra = dict(meta.extra) if meta is not None else {}
            if (extra.get("source") != SOURCE or extra.get("run") != self.run
                    or extra.get("settings", self.settings) != self.settings):  # files of older hsrl have none
                raise InputError(f"--save-trajectories {self.directory} holds {path.name}, which this run did not "
                                 f"write (another run folder, or this one with other settings): give an empty or "
                                 f"new folder")
            mine.append((int(extra.get("update", -1)), path))
        kept = []
        for update, path in mine:
            if update >= resume_update:
                path.unlink()
            else:
                kept.append((update, path.stat().st_size))
        self.used = sum(size for _, size in kept)
        self.written = len(kept)
        self.last_size = max(kept)[1] if kept else None  # the newest chunk's, as the run had it before each write
        if state is not None and _text(state["directory"]) == str(self.directory.resolve()):
            self.stopped = _text(state["stopped"]) or None
            if self.stopped is not None:
                warnings.warn(f"--save-trajectories {self.directory}: saving stopped before the checkpoint this run "
                              f"resumes from ({self.stopped}) and stays stopped, so that the folder has no gap; "
                              f"training goes on (a new folder saves the rest)", stacklevel=2)

    def state_dict(self) -> dict:
        """What a checkpoint keeps (`hsrl.rl.resume`): the folder, and why saving stopped ('' while it saves), as
        UTF-8 bytes."""
        return {"directory": _utf8(str(self.directory.resolve())), "stopped": _utf8(self.stopped or "")}

    def saves(self, update: int) -> bool:
        return self.stopped is None and update % self.every == 0

    def write(self, update: int, arrays: dict[str, np.ndarray]) -> None:
        """Write one update's rollout (host arrays, (T, E, ...) each) in the background, unless the budget or the
        disk says stop."""
        self.wait()
        if self.stopped is not None:
            return
        estimate = self.last_size or sum(a.nbytes for a in arrays.values())
        free = shutil.disk_usage(self.directory).free
        if self.used + estimate > self.budget:
            return self._stop(f"the next chunk would take the folder past --save-trajectories-max-gb "
                              f"{self.budget / 1e9:g} ({self.used / 1e9:.2f} GB written)")
        if free < 2 * estimate:
            return self._stop(f"{free / 1e9:.2f} GB free on its disk, under two chunks' worth")
        rows = {k: v.reshape((-1,) + v.shape[2:]) for k, v in arrays.items()}  # (T, E, ...) -> time-major rows
        meta = ChunkMeta(env_name=self.info.name, num_envs=self.num_envs,
                         obs_kind="pixels" if self.info.pixels else "symbolic",
                         first_step=update * self.num_steps, achievement_names=self.info.achievement_names,
                         spec_json=self.spec_json if "hidden_state" in rows else None,
                         segment=update // self.every if self.every > 1 else 0,
                         extra={"source": SOURCE, "run": self.run, "settings": self.settings, "update": update,
                                "seed": self.seed})
        path = chunk_path(self.directory, update // self.every)
        self._pending = self._pool.submit(write_chunk, path, rows, meta)

    def wait(self) -> None:
        """Let the chunk being written finish (a failure for lack of space stops saving; any other raises)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            path = pending.result()
        except OSError as err:  # DiskFullError included: the run goes on, saving stops
            self._stop(f"writing a chunk failed ({err})")
            return
        self.last_size = path.stat().st_size
        self.used += self.last_size
        self.written += 1

    def _stop(self, why: str) -> None:
        self.stopped = why
        warnings.warn(f"--save-trajectories {self.directory}: stopped saving: {why}; training goes on",
                      stacklevel=3)

    def close(self) -> None:
        self.wait()
        self._pool.shutdown()


def _utf8(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), np.uint8)


def _text(array) -> str:
    return np.asarray(array, np.uint8).tobytes().decode()
