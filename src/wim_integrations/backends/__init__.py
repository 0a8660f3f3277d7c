"""Model backends: the few operations the WiM engine needs from a model."""

from .base import Backend, GenerationRequest

__all__ = ["Backend", "GenerationRequest"]
