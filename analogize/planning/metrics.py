"""What sensitivity and plan measure, declared once: the metrics, which of them are better lower, and the clean
model's own value of each (against itself)."""

METRICS = ("accuracy", "agreement", "rel_error")
LOWER_IS_BETTER = ("rel_error",)
CLEAN_VALUE = {"agreement": 1.0, "rel_error": 0.0}


def scored_metric(labelled: bool, record: dict) -> str:
    """The default: accuracy with labels, else top-1 agreement with the clean model, else (an output without
    classes: a regression, a state, an embedding) its relative error."""
    if labelled:
        return "accuracy"
    return "agreement" if record.get("agreement_mean") is not None else "rel_error"
