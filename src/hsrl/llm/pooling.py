"""Pooling per-token states into one vector per sample, and the layer-index convention.

The one place where token states become a sample's hidden state: every backend calls `pool`.
"""

import torch

from hsrl.llm.spec import POOLINGS


def resolve_layer(layer: int, num_layers: int) -> int:
    """HF `hidden_states` index (0 = embeddings, num_layers = final normed output; negative from the end) -> 0..L."""
    n = num_layers + 1
    if not -n <= layer < n:
        raise ValueError(f"layer {layer} is out of range for a model with {num_layers} blocks (valid: {-n}..{n - 1})")
    return layer % n


def pool(states: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, T, H) states and (B, T) bool mask of the tokens to pool -> (B, H) float32.

    'mean' averages the masked tokens in float32; 'last' takes the last masked token. A sample with no token to
    pool is an error, never a zero vector.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r}; expected one of {', '.join(POOLINGS)}")
    mask = mask.to(torch.bool)
    counts = mask.sum(dim=1)
    if bool((counts == 0).any()):
        empty = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"no tokens to pool for samples {empty} of the batch")
    if pooling == "mean":
        weights = mask.to(torch.float32) / counts[:, None].to(torch.float32)
        return torch.einsum("bt,bth->bh", weights, states.to(torch.float32))
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = torch.where(mask, positions, -1).max(dim=1).values
    return states[torch.arange(states.shape[0], device=states.device), last].to(torch.float32)
