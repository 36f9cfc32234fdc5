"""The report as one self-contained HTML file, readable offline: no external style sheet, script or font, plots
embedded as base64 PNG. Every string from a result is escaped, since result files are untrusted."""
from __future__ import annotations

import base64
from html import escape

from ..errors import AnalogizeError
from ..model_io import atomic_output, refuse_overwrites
from .formats import Plot, Section, Table, section

REPORT_SUFFIXES = (".html", ".htm")

_STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1d1d1f;
       max-width: 1180px; margin: 0 auto; padding: 1.5em 2em 4em; }
h1 { font-size: 1.6em; margin-bottom: .2em; }
h2 { border-bottom: 2px solid #c9ced8; padding-bottom: .2em; margin-top: 2.2em; }
h3, h4 { margin: 1.4em 0 .5em; }
table { border-collapse: collapse; margin: .4em 0 1.4em; font-variant-numeric: tabular-nums; }
caption { text-align: left; font-weight: 600; padding: .3em 0; }
th, td { border: 1px solid #c9ced8; padding: .25em .6em; text-align: left; vertical-align: top;
         overflow-wrap: anywhere; }
thead th { background: #e9edf4; }
tbody tr:nth-child(even) { background: #f6f7fa; }
table.settings th { background: #f0f2f6; font-weight: 500; min-width: 12em; }
figure { margin: 1em 0 1.6em; }
figure img { max-width: 100%; height: auto; border: 1px solid #e1e4ea; }
figcaption { color: #555; font-size: .9em; }
.warnings { background: #fff4e5; border-left: 4px solid #e8a33d; padding: .4em 1em; }
.no-warnings { color: #2e6b30; }
details { margin: .4em 0 1em; }
summary { cursor: pointer; font-weight: 600; }
nav ol { padding-left: 1.4em; }
.meta { color: #666; }
"""


def _escaped(value) -> str:
    """``value`` as HTML text: a field of an untrusted file may hold a number, or markup, where text belongs."""
    return escape(str(value))


def _table_html(table: Table) -> str:
    head = "".join(f"<th>{_escaped(name)}</th>" for name in table.header)
    body = "".join("<tr>" + "".join(f"<td>{_escaped(cell)}</td>" for cell in row) + "</tr>" for row in table.rows)
    if not table.rows:
        body = f'<tr><td colspan="{len(table.header)}">none</td></tr>'
    markup = f"<table><caption>{_escaped(table.caption)}</caption><thead><tr>{head}</tr></thead>" \
             f"<tbody>{body}</tbody></table>"
    # folded tables need no script: the browser opens a <details> element itself
    return f"<details><summary>{_escaped(table.caption)}</summary>{markup}</details>" if table.folded else markup


def _plot_html(plot: Plot, model: str) -> str:
    image = base64.b64encode(plot.png).decode("ascii")
    caption = f"{plot.caption} ({model})"
    return f'<figure><img src="data:image/png;base64,{image}" alt="{_escaped(caption)}">' \
           f"<figcaption>{_escaped(caption)}</figcaption></figure>"


def _list_html(items: list[str], css_class: str) -> str:
    return f'<ul class="{css_class}">' + "".join(f"<li>{_escaped(item)}</li>" for item in items) + "</ul>"


def _section_html(part: Section, anchor: str, level: int) -> str:
    heading = f"{part.kind[:1].upper()}{part.kind[1:]}: {part.model}"
    settings = "".join(f'<tr><th scope="row">{_escaped(name)}</th><td>{_escaped(value)}</td></tr>'
                       for name, value in part.settings)
    markup = [f'<section id="{anchor}">', f"<h{level}>{_escaped(heading)}</h{level}>",
              f'<table class="settings"><caption>settings</caption><tbody>{settings}</tbody></table>']
    if part.warnings:
        markup.append(f'<div class="warnings"><h{level + 1}>Warnings</h{level + 1}>'
                      f'{_list_html(part.warnings, "warning-list")}</div>')
    else:
        markup.append('<p class="no-warnings">No warnings.</p>')
    if part.notes:
        markup.append(_list_html(part.notes, "notes"))
    markup += [_plot_html(plot, part.model) for plot in part.plots]
    markup += [_table_html(table) for table in part.tables]
    markup += [_section_html(inner, f"{anchor}-{number}", level + 1)
               for number, inner in enumerate(part.parts, start=1)]
    markup.append("</section>")
    return "\n".join(markup)


def render_report(results: list[dict], title: str | None = None, sources: list | None = None) -> str:
    """The HTML report of ``results`` (dicts as analogize's ``--json`` outputs hold them): one section each, with
    a table of contents when there are several. ``sources``, the files the results came from, name them in the
    report and in errors. A result of an unknown format, or malformed, is refused in one line."""
    from .. import __version__

    if not results:
        raise AnalogizeError("nothing to report: give at least one result")
    if sources is not None and len(sources) != len(results):
        raise ValueError(f"{len(sources)} sources for {len(results)} results")
    names = [str(source) for source in sources] if sources is not None else \
        [f"result {number}" for number in range(1, len(results) + 1)]
    sections = [section(result, name) for result, name in zip(results, names)]
    if sources is not None:
        for part, name in zip(sections, names):
            part.settings.insert(0, ("result file", name))
    title = title or "analogize report: " + ", ".join(dict.fromkeys(part.model for part in sections))
    contents = ""
    if len(sections) > 1:
        contents = "<nav><h2>Contents</h2><ol>" + "".join(
            f'<li><a href="#result-{number}">{_escaped(part.kind)}: {_escaped(part.model)}</a></li>'
            for number, part in enumerate(sections, start=1)) + "</ol></nav>"
    body = "\n".join(_section_html(part, f"result-{number}", 2) for number, part in enumerate(sections, start=1))
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{_escaped(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{_escaped(title)}</h1>\n<p class=\"meta\">written by analogize {_escaped(__version__)}</p>\n"
            f"{contents}\n{body}\n</body>\n</html>\n")


def write_report(results: list[dict], path, title: str | None = None, sources: list | None = None) -> None:
    """:func:`render_report`, written atomically to ``path``; refused when ``path`` is one of ``sources``."""
    refuse_overwrites({f"the result {source}": source for source in sources or ()}, {"the report": path})
    text = render_report(results, title, sources)
    with atomic_output(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
