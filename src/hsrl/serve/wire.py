"""The hidden-state server's wire format, shared by the server and its client (numpy only, no web framework).

Arrays travel as JSON objects ``{"dtype": "float32", "shape": [B, D], "data": "<base64>"}``, the data being the
array's bytes in little-endian C order. Requests may also give observations as plain JSON lists of lists. Image
observations travel as ``{"dtype": "uint8", "shape": [B, H, W, 3], "data": "<base64>"}`` (float frames are converted
with `hsrl.pixels.pixels_to_uint8` first).
"""

import base64
import binascii
import math

import numpy as np

HEALTH_PATH = "/health"
HIDDEN_STATES_PATH = "/v1/hidden-states"
STATS_PATH = "/v1/stats"
LEGACY_HIDDEN_STATE_PATH = "/get_hidden_state"  # `hsrl serve --legacy-routes`: the route of the servers other tools ran
TOKEN_ENV = "HSRL_SERVE_TOKEN"  # the bearer token, for `hsrl serve` and the client, when not given explicitly

DTYPES = {"float32": np.dtype("<f4"), "float64": np.dtype("<f8"), "uint8": np.dtype("u1")}
NUMBER_DTYPES = ("float32", "float64")  # symbolic observations and hidden states
IMAGE_DTYPES = ("uint8",)  # image observations


def encode_array(x: np.ndarray, dtype: str = "float32") -> dict:
    """Array -> ``{"dtype", "shape", "data"}`` with base64 little-endian data."""
    arr = np.ascontiguousarray(x, dtype=DTYPES[dtype])
    return {"dtype": dtype, "shape": list(arr.shape), "data": base64.b64encode(arr.tobytes()).decode("ascii")}


def decode_array(dtype: str, shape, data: str, *, what: str = "array", dtypes=NUMBER_DTYPES) -> np.ndarray:
    """``{"dtype", "shape", "data"}`` fields -> array; ValueError naming `what` and the problem otherwise.

    The byte count implied by dtype and shape is checked against the decoded data before any array is built.
    """
    if dtype not in dtypes:
        raise ValueError(f"{what}.dtype: {dtype!r} is not supported; expected one of {', '.join(dtypes)}")
    if not isinstance(shape, (list, tuple)) or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
        raise ValueError(f"{what}.shape: expected a list of integers, got {shape!r}")
    if any(s < 0 for s in shape):
        raise ValueError(f"{what}.shape: negative dimension in {list(shape)}")
    if not isinstance(data, str):
        raise ValueError(f"{what}.data: expected a base64 string, got {type(data).__name__}")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as err:
        raise ValueError(f"{what}.data: invalid base64 ({err})") from None
    item = DTYPES[dtype].itemsize
    expected = math.prod(shape) * item
    if len(raw) != expected:
        raise ValueError(
            f"{what}.data: {len(raw)} bytes decoded, but dtype {dtype} and shape {list(shape)} need {expected}"
        )
    return np.frombuffer(raw, dtype=DTYPES[dtype]).reshape(shape)
