"""Per-layer settings: the plan file (:mod:`.plan_file`, its declarations), what is measured (:mod:`.metrics`),
where accuracy is lost layer by layer (:mod:`.sensitivity`), the search for the cheapest plan that meets a target
(:mod:`.search`), and their tables and figures (:mod:`.outputs`)."""
from .plan_file import PLAN_FORMAT, PLAN_VERSION, Plan, read_plan

__all__ = ["PLAN_FORMAT", "PLAN_VERSION", "Plan", "read_plan"]
