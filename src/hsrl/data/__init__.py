"""Trajectory data: chunk file format, dataset loading, returns and statistics.

See `hsrl.data.chunks` for the file format and `hsrl.data.dataset` for loading many chunks. Collection lives in
`hsrl.data.collect`; atomic writes in `hsrl.atomic`; spec comparison in `hsrl.llm.spec`.
"""

from hsrl.data.chunks import (
    KEYS, PIXEL_ROUNDTRIP_MAX_ERROR, REQUIRED_KEYS, ROW_LAYOUT, SCHEMA_VERSION, Chunk, ChunkInfo, ChunkMeta,
    DataFileError, check_chunk_values, chunk_path, decode_text, encode_text, inspect_chunk, list_chunks, pixels_to_uint8, read_chunk,
    read_meta, to_time_env, uint8_to_pixels, update_chunk, write_chunk,
)
from hsrl.data.dataset import (
    Dataset, HiddenLayout, check_token_counts, hidden_layout, load_dataset, read_pooled_hidden,
)
from hsrl.llm.spec import spec_differences, spec_hash
from hsrl.data.returns import add_returns, discounted_returns
from hsrl.data.stats import HiddenStats, RunningMoments, dataset_stats, normalize_hidden

__all__ = [
    "KEYS", "PIXEL_ROUNDTRIP_MAX_ERROR", "REQUIRED_KEYS", "ROW_LAYOUT", "SCHEMA_VERSION", "Chunk", "ChunkInfo",
    "ChunkMeta", "DataFileError", "Dataset", "HiddenLayout", "HiddenStats", "RunningMoments", "add_returns",
    "check_chunk_values", "check_token_counts", "chunk_path", "dataset_stats", "decode_text", "discounted_returns", "encode_text",
    "hidden_layout", "inspect_chunk", "list_chunks", "load_dataset", "normalize_hidden", "pixels_to_uint8",
    "read_chunk", "read_meta", "read_pooled_hidden", "spec_differences", "spec_hash", "to_time_env",
    "uint8_to_pixels", "update_chunk", "write_chunk",
]
