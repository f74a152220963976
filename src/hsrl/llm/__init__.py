"""LLM hidden-state extraction: spec, prompts, backends, pooling, model registry.

    from hsrl.llm import ExtractionSpec, make_extractor
    extractor = make_extractor(ExtractionSpec(model="minilm"))
    result = extractor.extract(text_observations)   # result.hidden_state: (B, H) float32

Importing this package does not import torch; the backend loads it.
"""

from hsrl.llm.backends import make_extractor
from hsrl.llm.extractor import ExtractionResult, Extractor
from hsrl.llm.spec import ExtractionSpec, check_spec, spec_differences

__all__ = ["ExtractionResult", "ExtractionSpec", "Extractor", "check_spec", "make_extractor", "spec_differences"]
