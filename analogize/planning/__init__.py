"""Per-layer settings: the plan file (:mod:`.plan_file`, its declarations), where accuracy is lost layer by layer
(:mod:`.sensitivity`), and the search for the cheapest plan that meets a target (:mod:`.search`)."""
from .plan_file import PLAN_FORMAT, PLAN_VERSION, Plan, read_plan

__all__ = ["PLAN_FORMAT", "PLAN_VERSION", "Plan", "read_plan"]
