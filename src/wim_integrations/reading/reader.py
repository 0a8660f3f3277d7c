"""The reader value: what a run needs from its `WiM`, frozen, so a stream never reaches back into the facade."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..backends.base import Backend
from ..prompts import PromptSet
from .doc_cache import DocumentCache
from .judging import Judge, judge_for
from .plan import Plan, Planner


@dataclass(frozen=True)
class Reader:
    backend: Backend
    planner: Planner
    prompts: PromptSet
    document_cache: DocumentCache | None = None  # prefilled documents kept for later questions (in-process keys/values)
    classifier: Backend | None = None  # the auxiliary classifier's model (classification="auxiliary")
    judge: Backend | None = None  # the auxiliary judge's model (classification="judge")

    def judge_for(self, plan: Plan, check: Callable[[], None]) -> Judge:
        """A new judge for one run (judges hold per-run state)."""
        return judge_for(plan, self.backend, self.classifier, self.prompts.classification, check, self.judge)
