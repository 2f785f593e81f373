"""The one request path: ``Pipeline`` runs a ``Flow`` (one request and what each stage adds) through
named stages; ``Parts`` builds the strategy objects they use, once. See coe.pipeline.core."""

from coe.experts.calls import Slot
from coe.pipeline.answering import next_candidate
from coe.pipeline.core import Pipeline
from coe.pipeline.flow import Flow
from coe.pipeline.parts import Parts

__all__ = ["Flow", "Parts", "Pipeline", "Slot", "next_candidate"]
