"""One self-contained HTML report of analogize results (evaluate, finetune, sensitivity, plan search): per
result its model and settings, tables, plots and warnings. :mod:`.formats` declares the formats it reads and
builds each result's section, :mod:`.html` writes the page, :mod:`.plots` draws the figures that no other module
draws."""
from .formats import FORMATS, read_result
from .html import REPORT_SUFFIXES, render_report, write_report

__all__ = ["FORMATS", "REPORT_SUFFIXES", "read_result", "render_report", "write_report"]
