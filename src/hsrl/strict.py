"""One strict way to read a dataclass back from its JSON dict: unknown keys are an error that names them.

`ExtractionSpec`, `NetworkConfig`, `HiddenStats` and `ChunkMeta` all read their stored dicts through
`dataclass_kwargs`, so a file written by a newer hsrl (or edited by hand) is refused instead of silently losing a
field. Imports nothing of hsrl.
"""

import dataclasses
from collections.abc import Collection, Mapping


def dataclass_kwargs(cls, d, derived: Collection[str] = ()) -> dict:
    """The constructor arguments of dataclass `cls` held in the dict `d`.

    Raises ValueError naming the keys of `d` that are neither fields of `cls` nor `derived`, and the required fields
    `d` lacks. `derived` names keys that `to_dict` writes for readers (a hash, a size) but the constructor does not
    take; they are left out of the result (the caller may check them against the built object).
    """
    name = cls.__name__
    if not isinstance(d, Mapping):
        raise ValueError(f"{name}: expected a JSON object, got {type(d).__name__}")
    fields = [f for f in dataclasses.fields(cls) if f.init]
    known = {f.name for f in fields}
    unknown = sorted(set(d) - known - set(derived))
    if unknown:
        raise ValueError(f"{name}: unknown fields {unknown} (written by a newer hsrl?; known: {sorted(known)})")
    required = [f.name for f in fields
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [n for n in required if n not in d]
    if missing:
        raise ValueError(f"{name}: missing fields {missing}")
    return {k: v for k, v in d.items() if k in known}
