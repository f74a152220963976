import json
import warnings

import pytest

from hsrl.llm.prompt import TEMPLATE_VERSIONS
from hsrl.llm.spec import ExtractionSpec, check_compatible
from hsrl.text import RENDERER_VERSION


def test_json_round_trip_sorted_and_hash_stable():
    spec = ExtractionSpec(model="qwen3-4b-thinking", layer=(-1, 12), tokens=64, template="chat", seed=3)
    text = spec.to_json()
    assert list(json.loads(text)) == sorted(json.loads(text))
    back = ExtractionSpec.from_json(text)
    assert back == spec and back.layer == (-1, 12)
    assert back.hash == spec.hash and len(spec.hash) == 12
    assert ExtractionSpec.from_json(spec.to_json(indent=2)) == spec
    assert spec.replace(seed=4).hash != spec.hash


def test_defaults_resolved_from_text_and_prompt():
    spec = ExtractionSpec(template="chat")
    assert spec.renderer_version == str(RENDERER_VERSION)
    assert spec.template_version == TEMPLATE_VERSIONS["chat"]
    assert ExtractionSpec().template_version is None  # 'auto' is resolved by the backend
    assert ExtractionSpec(layer=[1, 2]).layer == (1, 2)


def test_diff_and_check_compatible():
    a = ExtractionSpec(model="minilm")
    b = a.replace(layer=2, temperature=1.0)
    assert a.diff(b) == ["layer", "temperature"]
    assert check_compatible(a, a) == []
    with pytest.raises(ValueError, match="layer, temperature"):
        check_compatible(a, b)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert check_compatible(a, b, allow=True) == ["layer", "temperature"]
    assert "layer" in str(caught[0].message)


@pytest.mark.parametrize(
    "kwargs", [{"pooling": "max"}, {"tokens": 0}, {"top_p": 0.0}, {"temperature": -1}, {"dtype": "int8"}, {"layer": ()}]
)
def test_invalid_values_rejected(kwargs):
    with pytest.raises(ValueError):
        ExtractionSpec(**kwargs)


def test_unknown_field_rejected():
    d = ExtractionSpec().to_dict() | {"future_field": 1}
    with pytest.raises(ValueError, match="future_field"):
        ExtractionSpec.from_dict(d)
