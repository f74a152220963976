import json
import warnings

import pytest

from hsrl.llm.prompt import TEMPLATE_VERSIONS
from hsrl.llm.spec import SAMPLING_FIELDS, ExtractionSpec, check_spec, spec_differences
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


def test_check_spec_names_fields_and_values():
    a = ExtractionSpec(model="minilm", tokens=8)
    b = a.replace(layer=2, temperature=1.0)
    assert spec_differences(a, b) == ["layer", "temperature"]
    assert check_spec(a, a) == []
    with pytest.raises(ValueError, match=r"fields that differ: layer, temperature \(layer: -1 != 2; temperature"):
        check_spec(a, b)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert check_spec(a, b, allow=True) == ["layer", "temperature"]
    assert "layer" in str(caught[0].message)


def test_spec_differences_takes_specs_json_dicts_and_none():
    a = json.dumps({"model": "m", "layer": -1, "tokens": 1})
    b = json.dumps({"model": "m", "layer": 12, "tokens": 1, "dtype": "bf16"})
    assert spec_differences(a, a) == [] and spec_differences(a, b) == ["dtype", "layer"]
    assert spec_differences(None, a) == ["<labelled vs unlabelled>"] and spec_differences(None, None) == []
    spec = ExtractionSpec(model="minilm", layer=(1, 2))
    assert spec_differences(spec, spec.to_json()) == spec_differences(spec.to_dict(), spec) == []
    assert spec_differences(spec, spec.replace(layer=(2, 1)).to_json()) == ["layer"]
    with pytest.raises(ValueError, match="must be an object"):
        spec_differences("[1]", spec)


def test_prompt_only_specs_ignore_sampling_fields():
    """tokens == 1 samples nothing: temperature, top_p and seed change no hidden state, so they never refuse."""
    prompt_only = ExtractionSpec(model="minilm", tokens=1)
    resampled = prompt_only.replace(seed=1, temperature=1.0, top_p=0.5)
    assert SAMPLING_FIELDS == ("temperature", "top_p", "seed")
    assert spec_differences(prompt_only, resampled) == []
    assert check_spec(prompt_only.to_json(), resampled.to_json()) == []
    assert spec_differences(prompt_only, resampled.replace(layer=3)) == ["layer"]  # other fields still count
    generating = prompt_only.replace(tokens=16)
    assert spec_differences(generating, generating.replace(seed=1)) == ["seed"]
    # one side generates: its sampling settings matter
    assert spec_differences(prompt_only, resampled.replace(tokens=16)) == ["seed", "temperature", "tokens", "top_p"]


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
