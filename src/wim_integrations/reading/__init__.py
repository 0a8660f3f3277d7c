"""Reading: one run of the WiM algorithm over a planned context.

`plan` (inputs checked, tokenized, segmented; no forward pass) · `reader` (the frozen value a run needs) · `stream`
(`WiMStream`: the events, early exit, async) · `loop` (the one loop over groups of segments) · `judging` (a strategy
per classification mode) with `scoring` and `classifier` · `document` and `doc_cache` (prefilled documents kept for
later questions) · `segmenter` · `stopping` (margin stop rules) · `hops` (the document filters' later hops)
· `timing`."""

from .plan import ConfigInput, Plan, Planner, as_config, default_segment_tokens
from .reader import Reader
from .stream import WiMStream

__all__ = ["ConfigInput", "Plan", "Planner", "Reader", "WiMStream", "as_config", "default_segment_tokens"]
