"""Trajectory data: chunk file format, atomic read/write, dataset loading, returns and statistics.

See `hsrl.data.chunks` for the file format. Collection lives in `hsrl.data.collect`.
"""

from hsrl.data.chunks import (
    KEYS, PIXEL_ROUNDTRIP_MAX_ERROR, REQUIRED_KEYS, ROW_LAYOUT, SCHEMA_VERSION, Chunk, ChunkInfo, ChunkMeta,
    DataFileError, Dataset, chunk_path, inspect_chunk, list_chunks, load_dataset, pixels_to_uint8, read_chunk,
    read_meta, spec_differences, spec_hash, to_time_env, uint8_to_pixels, update_chunk, write_chunk,
)
from hsrl.data.returns import add_returns, discounted_returns
from hsrl.data.stats import HiddenStats, RunningMoments, dataset_stats, normalize_hidden

__all__ = [
    "KEYS", "PIXEL_ROUNDTRIP_MAX_ERROR", "REQUIRED_KEYS", "ROW_LAYOUT", "SCHEMA_VERSION", "Chunk", "ChunkInfo",
    "ChunkMeta", "DataFileError", "Dataset", "HiddenStats", "RunningMoments", "add_returns", "chunk_path",
    "dataset_stats", "discounted_returns", "inspect_chunk", "list_chunks", "load_dataset", "normalize_hidden",
    "pixels_to_uint8", "read_chunk", "read_meta", "spec_differences", "spec_hash", "to_time_env",
    "uint8_to_pixels", "update_chunk", "write_chunk",
]
