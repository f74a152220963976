"""`make_extractor`: the backend a spec names, loaded. The interface the backends share is `hsrl.llm.extractor`."""

from hsrl.llm.extractor import Extractor
from hsrl.llm.spec import ExtractionSpec


def make_extractor(spec: ExtractionSpec, **kwargs) -> Extractor:
    """The backend that `spec.backend` names, loaded and ready (kwargs go to the backend's constructor)."""
    if spec.backend == "transformers" and spec.reads_images:
        from hsrl.llm.vision_backend import VisionExtractor

        return VisionExtractor(spec, **kwargs)
    if spec.backend == "transformers":
        from hsrl.llm.transformers_backend import TransformersExtractor

        return TransformersExtractor(spec, **kwargs)
    if spec.backend == "vllm":
        from hsrl.llm.vllm_backend import VLLMExtractor

        return VLLMExtractor(spec, **kwargs)
    raise ValueError(f"unknown backend {spec.backend!r}")
