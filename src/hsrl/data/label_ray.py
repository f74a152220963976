"""`hsrl label --ray [ADDRESS]`: the same labelling, with files spread over a Ray cluster.

One long-lived actor per model replica (`--workers`, each with `--gpus-per-worker` GPUs) loads the model
once and labels whole files; files are tasks handed to whichever actor is free. A file whose actor dies
is given to a fresh actor (up to `--retries` times) and resumes from its saved batches, so the outputs
equal a local run's. OUT_DIR must be a folder every node can write (a shared filesystem on a multi-node
cluster). Each actor records `host pid` in OUT_DIR/.workers/ so an operator can see where work runs.
"""

import os
import socket
from collections import deque
from pathlib import Path

from hsrl.data.chunks import DataFileError, read_meta

WORKERS_DIR = ".workers"


def _worker_class(ray):
    @ray.remote(max_restarts=0)
    class LabelWorker:
        def __init__(self, make_labeller, meta, out_dir: str):
            self.labeller = make_labeller(meta)
            folder = Path(out_dir) / WORKERS_DIR
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{socket.gethostname()}-{os.getpid()}").write_text(f"{socket.gethostname()} {os.getpid()}\n")

        def label(self, src: str, dst: str) -> tuple[str, int | None, str | None]:
            try:
                return src, self.labeller.label_file(Path(src), Path(dst)), None
            except DataFileError as err:  # bad input: reported, not retried
                return src, None, str(err)

    return LabelWorker


def label_files_ray(files: list[Path], out: Path, make_labeller, *, address: str, workers: int | None,
                    gpus_per_worker: float, retries: int, on_file=None) -> tuple[dict[str, int], dict[str, str]]:
    """Label `files` into `out` on a Ray cluster. Returns ({file name: rows}, {file name: failure})."""
    import ray

    if address in ("", "local", "auto-local"):
        address = None  # start a local Ray instance
    ray.init(address=address, ignore_reinit_error=True, include_dashboard=False, log_to_driver=False)
    try:
        if workers is None:
            resources = ray.cluster_resources()
            workers = int(resources.get("GPU", 0) // gpus_per_worker) if gpus_per_worker > 0 else int(resources.get("CPU", 1))
        if workers < 1:
            raise ValueError(f"no room for a worker with {gpus_per_worker} GPUs on this cluster")
        Worker = _worker_class(ray)
        meta = read_meta(files[0])

        def start():
            return Worker.options(num_gpus=gpus_per_worker, num_cpus=1).remote(make_labeller, meta, str(out))

        pending = deque(files)
        attempts = {f.name: 0 for f in files}
        done, failed = {}, {}
        running = {}  # object ref -> (actor, file)
        idle = [start() for _ in range(min(workers, len(files)))]
        while pending or running:
            while pending and idle:
                actor, f = idle.pop(), pending.popleft()
                running[actor.label.remote(str(f), str(out / f.name))] = (actor, f)
            ready, _ = ray.wait(list(running), num_returns=1)
            ref = ready[0]
            actor, f = running.pop(ref)
            try:
                _, rows, error = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as err:
                attempts[f.name] += 1
                if attempts[f.name] > retries:
                    failed[f.name] = f"worker died {attempts[f.name]} times ({type(err).__name__})"
                else:
                    pending.appendleft(f)  # resumes from its saved batches on a fresh worker
                idle.append(start())
                continue
            idle.append(actor)
            if error is None:
                done[f.name] = rows
            else:
                failed[f.name] = error
            if on_file is not None:
                on_file(f, rows)
        return done, failed
    finally:
        ray.shutdown()
