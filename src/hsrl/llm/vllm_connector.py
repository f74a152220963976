"""The KV connector that saves vLLM's extracted hidden states for `hsrl.llm.vllm_backend` (loaded by vLLM through
`kv_connector_module_path`, so nothing is registered and no config file is edited).

vLLM's `ExampleHiddenStatesConnector` copies the states asynchronously on a CUDA stream into pinned memory and
polls a CUDA event: on CPU `pin_memory=True` needs an accelerator and the CPU event stand-in has no `query()`.
This subclass keeps its scheduler side (file names, lock files, delayed block freeing) and replaces the worker-side
write with a synchronous one that works on every device: gather the request's slots from the hidden-state cache,
copy to CPU, write `<req_id>.safetensors` under a temporary name and rename it into place. A file that exists under
its final name is therefore complete, and the reader never needs the lock (which, in-process, the engine's own
thread holds until the write).
"""

import os

import torch
from safetensors.torch import save_file
from vllm.distributed.kv_transfer.kv_connector.v1.example_hidden_states_connector import (
    ExampleHiddenStatesConnector,
    PendingSave,
    extract_from_kv_cache,
)


class _Written:
    """Stands in for the CUDA event the parent polls in `get_finished`: the write is already done."""

    @staticmethod
    def query() -> bool:
        return True


class HsrlHiddenStatesConnector(ExampleHiddenStatesConnector):
    """`ExampleHiddenStatesConnector` with a synchronous, atomic, device-agnostic write."""

    def _submit_async_write(self, pending: PendingSave) -> None:
        if not self._is_tp_rank_zero:
            return
        if self._kv_cache is None:
            raise RuntimeError("hidden-state cache not registered (register_kv_caches was not called)")
        block_ids = torch.tensor(pending.block_ids, dtype=torch.long)
        offsets = torch.arange(self._block_size, dtype=torch.long)
        slots = (block_ids[:, None] * self._block_size + offsets[None, :]).flatten()
        states = extract_from_kv_cache(self._kv_cache, slots.to(self._kv_cache.device), pending.token_ids.shape[0])
        tensors = {"hidden_states": states.to("cpu").contiguous(), "token_ids": pending.token_ids.clone()}
        lock_fd = self._lock_fds.pop(pending.req_id, None)
        try:
            os.makedirs(os.path.dirname(pending.filename), exist_ok=True)
            partial = f"{pending.filename}.{os.getpid()}.tmp"
            save_file(tensors, partial)
            os.replace(partial, pending.filename)
        finally:
            if lock_fd is not None:
                os.close(lock_fd)  # releases the writer's lock for readers that wait on it
        self._req_copy_events[pending.req_id] = _Written()

