"""`make_extractor`: the backend a spec names, loaded. The interface the backends share is `hsrl.llm.extractor`."""

from hsrl.llm.extractor import Extractor
from hsrl.llm.spec import ExtractionSpec


def make_extractor(spec: ExtractionSpec, cache=None, **kwargs) -> Extractor:
    """The backend that `spec.backend` names, loaded and ready (kwargs go to the backend's constructor).

    cache: a `hsrl.llm.cache.StateCache` (e.g. `CacheFlags.state_cache()`) the extractor looks states up in and
    stores them to, or None (every state computed)."""
    extractor = _load(spec, **kwargs)
    extractor.cache = cache
    return extractor


def _load(spec: ExtractionSpec, **kwargs) -> Extractor:
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
