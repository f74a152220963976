"""The transformers backend on CUDA in bfloat16 (run with `pytest -m gpu` on a machine with a GPU)."""

import numpy as np
import pytest
import torch

from hsrl.llm import ExtractionSpec
from hsrl.llm.models import load_model
from hsrl.llm.transformers_backend import TransformersExtractor
from test_llm_qwen import OBS
from tiny_qwen import build_tiny_qwen

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_cuda_bfloat16_prefix_cache_generation_and_reextraction(tmp_path):
    qwen = load_model(str(build_tiny_qwen(tmp_path / "qwen", num_layers=3)))
    assert qwen.device == "cuda" and qwen.dtype == "bfloat16"
    spec = ExtractionSpec(model=qwen.path)
    cached = TransformersExtractor(spec, model=qwen).extract(OBS).hidden_state
    uncached = TransformersExtractor(spec, model=qwen, prefix_cache=False).extract(OBS).hidden_state
    scale = np.abs(uncached).max()
    np.testing.assert_allclose(cached, uncached, atol=0.05 * scale)
    ex = TransformersExtractor(spec.replace(tokens=8, temperature=1.0), model=qwen)
    gen = ex.extract(OBS)
    assert gen.hidden_state.dtype == np.float32 and np.isfinite(gen.hidden_state).all()
    again = ex.reextract(OBS, generated_ids=gen.generated_ids).hidden_state
    np.testing.assert_allclose(again, gen.hidden_state, atol=0.05 * np.abs(gen.hidden_state).max())
