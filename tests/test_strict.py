"""One strict from_dict: every stored dataclass refuses unknown keys (naming them) and missing required ones."""

import json

import numpy as np
import pytest
from data_helpers import SPEC, make_meta

from hsrl.data import ChunkMeta, HiddenStats
from hsrl.llm import ExtractionSpec
from hsrl.rl.networks import NetworkConfig

def _dict(obj) -> dict:
    return json.loads(obj.to_json())


# class, an instance, a required field (None: every field has a default, so older files without one still load)
STORED = {
    "ExtractionSpec": (ExtractionSpec, lambda: ExtractionSpec(model="minilm", layer=(1, 2)), None),
    "NetworkConfig": (NetworkConfig, lambda: NetworkConfig.for_env((7,), 5, 24), "num_actions"),
    "HiddenStats": (HiddenStats, lambda: HiddenStats(np.zeros(3), np.ones(3), 10, SPEC), "mean"),
    "ChunkMeta": (ChunkMeta, lambda: make_meta(2, spec=SPEC), "env_name"),
}


@pytest.mark.parametrize("name", STORED)
def test_from_dict_round_trips_and_refuses_unknown_and_missing_keys(name):
    cls, make, required = STORED[name]
    d = _dict(make())
    assert _dict(cls.from_dict(d)) == d
    with pytest.raises(ValueError, match=rf"{name}: unknown fields \['colour', 'zeta'\]"):
        cls.from_dict({**d, "zeta": 1, "colour": "red"})
    if required is not None:
        with pytest.raises(ValueError, match=rf"{name}: missing fields \['{required}'\]"):
            cls.from_dict({k: v for k, v in d.items() if k != required})
    with pytest.raises(ValueError, match="expected a JSON object"):
        cls.from_dict([1, 2])


def test_hidden_stats_checks_its_derived_fields():
    d = HiddenStats(np.zeros(3), np.ones(3), 10, SPEC).to_dict()
    with pytest.raises(ValueError, match="hidden_size 4"):
        HiddenStats.from_dict({**d, "hidden_size": 4})
    with pytest.raises(ValueError, match="spec_hash"):
        HiddenStats.from_dict({**d, "spec_hash": "0" * 12})
