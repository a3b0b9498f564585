"""The HTML around ``search report``'s figures (search/reporting/report.py): the page's head, the tables of settings, the
finalized result, the best and the failed trials, and each figure's section.

A report must open offline (a file mailed or copied off a cluster), so plotly.js cannot come from a CDN; inlined as
it ships it would be most of the page. It is inlined once, gzip-compressed and base64-encoded (well under half its
size), and one script at the end of the page unpacks it with the browser's ``DecompressionStream`` (every current
browser has it), runs it, then draws each figure from its JSON: each figure is a ``<div class="plotly-graph-div">``
and a ``<script type="application/json">`` with its data and layout, so nothing calls Plotly before it is loaded.
"""

from __future__ import annotations

import base64
import gzip
import html
import json
from dataclasses import dataclass
from functools import lru_cache

import optuna
from optuna.trial import TrialState

from search.reporting import queries
from search.finalizing.budget import estimate_text
from search.finalizing.final_record import finalized_rows
from search.reporting.formats import param_count
from search.reporting.notes import KEY_PARAMS, outcome, settings_rows

TOP = 5  # best trials in the summaries


@dataclass
class Section:
    title: str
    figure: object | None = None  # a plotly Figure, or None with a note saying why not
    note: str = ""  # with a figure: a caution shown above it


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def describe_params(params: dict, keys=KEY_PARAMS) -> str:
    return " ".join(f"{k}={_fmt(params[k])}" for k in keys if k in params)


def counts_line(study: optuna.Study) -> str:
    by_state = queries.counts(study)
    parts = [f"{n} {state}" for state, n in by_state.items() if n]
    return f"{sum(by_state.values())} trials: " + (", ".join(parts) if parts else "none")


def _best_table(study: optuna.Study) -> str:
    rows = []
    for t in queries.best_trials(study, TOP):
        a = t.user_attrs
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
            f"#{t.number}", f"{t.value:.4f}", describe_params(t.params), param_count(a.get("parameters", "")),
            a.get("steps_per_second", ""), a.get("wall_seconds", ""), estimate_text(t) or "", a.get("device", ""),
            a.get("ended", ""))) + "</tr>")
    if not rows:
        return "<p>No complete trial yet.</p>"
    head = "".join(f"<th>{h}</th>" for h in ("trial", "accuracy", "key parameters", "model parameters", "steps/s",
                                               "wall s", "finalize (default steps, on the trial's device)", "device", "ended"))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _rows_table(head: tuple[str, ...], rows: list[tuple]) -> str:
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return (f"<table><thead><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in head)}</tr></thead>"
            f"<tbody>{cells}</tbody></table>")


def _settings_table(study: optuna.Study) -> str:
    rows = settings_rows(study)
    return _rows_table(("setting", "value"), rows) if rows else "<p>No settings recorded (a study made by hand).</p>"


def _final_html(study: optuna.Study) -> str:
    rows = finalized_rows(study)
    if not rows:
        return "<p>Not finalized yet: <code>search finalize best</code> retrains the best trial on the full budget.</p>"
    return _rows_table(("", ""), rows)


def _failures_html(study: optuna.Study) -> str:
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    if not failed:
        return "<p>No trial failed.</p>"
    rows = [(f"#{t.number}", outcome(t), describe_params(t.params), t.user_attrs.get("worker", ""),
             f"{t.datetime_start:%Y-%m-%d %H:%M:%S}" if t.datetime_start else "") for t in failed]
    return _rows_table(("trial", "why it failed", "key parameters", "worker", "started"), rows)


def provenance() -> str:
    """When the page was made, and with what: the UTC minute, then this package's, Optuna's and torch's versions
    (torch's from its installed metadata: the report needs no torch, and importing it would be a large part of
    the command's memory)."""
    from datetime import datetime, timezone
    from importlib.metadata import PackageNotFoundError, version

    from search.commands.base import package_version

    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = "not installed"
    return (f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}; hw04-search {package_version()}, "
            f"Optuna {optuna.__version__}, torch {torch_version}")


STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0.2em; } .meta { color: #555; }
table { border-collapse: collapse; font-size: 0.9em; } td, th { border: 1px solid #ccc; padding: 3px 8px; }
th { background: #f3f3f3; } .note { color: #7a5b00; background: #fff8e1; padding: 0.6em; border-radius: 4px; }
section { margin-top: 1.5em; }
"""


def render(study: optuna.Study, sections: list[Section]) -> str:
    parts = []
    for i, s in enumerate(sections):
        body = f'<p class="note">{html.escape(s.note)}</p>' if s.note else ""
        if s.figure is not None:
            body += figure_html(s.figure, f"figure-{i}")
        parts.append(f'<section id="section-{i}"><h2>{html.escape(s.title)}</h2>\n{body}\n</section>')
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Study {html.escape(study.study_name)}: search report</title>
<style>{STYLE}</style></head>
<body>
<h1>Study {html.escape(study.study_name)}</h1>
<p class="meta">{html.escape(counts_line(study))}. Report made {html.escape(provenance())}.</p>
<h2>Settings</h2>
{_settings_table(study)}
<h2>Finalized result</h2>
{_final_html(study)}
<h2>Best trials</h2>
{_best_table(study)}
<h2>Failed trials</h2>
{_failures_html(study)}
{''.join(parts)}
{loader_html() if any(s.figure is not None for s in sections) else ""}
</body></html>
"""


PLOT_CONFIG = {"displaylogo": False, "responsive": True}


def figure_html(figure, div_id: str) -> str:
    """The figure's div and its JSON (plotly's own encoder: numpy arrays, dates), drawn by ``loader_html``."""
    spec = figure.to_json().replace("</", "<\\/")  # a JSON escape: no "</script>" inside the script element
    height = f"{figure.layout.height}px" if figure.layout.height else "100%"
    return (f'<div id="{html.escape(div_id)}" class="plotly-graph-div" style="height:{height}; width:100%;"></div>\n'
            f'<script type="application/json" class="plotly-figure" data-target="{html.escape(div_id)}">'
            f"{spec}</script>")


@lru_cache(maxsize=1)
def _packed_plotlyjs() -> tuple[str, str]:
    from plotly.offline import get_plotlyjs, get_plotlyjs_version

    packed = gzip.compress(get_plotlyjs().encode(), compresslevel=9, mtime=0)  # mtime 0: the same page bytes
    return get_plotlyjs_version(), base64.b64encode(packed).decode("ascii")


def loader_html() -> str:
    """One script, at the end of the page: plotly.js decompressed and run, then every figure drawn. A browser
    without ``DecompressionStream`` gets a line saying why the figures are missing, not a blank page."""
    version, packed = _packed_plotlyjs()
    return f"""<!-- plotly.js v{version}, gzip-compressed and inlined once: the page opens offline -->
<script>
(async function () {{
  try {{
    const bytes = Uint8Array.from(atob("{packed}"), (c) => c.charCodeAt(0));
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    const script = document.createElement("script");
    script.textContent = await new Response(stream).text();
    document.head.appendChild(script);
    for (const spec of document.querySelectorAll("script.plotly-figure")) {{
      const figure = JSON.parse(spec.textContent);
      Plotly.newPlot(spec.dataset.target, figure.data, figure.layout, {json.dumps(PLOT_CONFIG)});
    }}
  }} catch (err) {{
    document.body.insertAdjacentHTML("afterbegin",
      '<p class="note">The figures could not be drawn: this browser cannot unpack the inlined plotly.js (' +
      String(err).replace(/[<>&]/g, "") + "). A current Chrome, Firefox, Safari or Edge can.</p>");
  }}
}})();
</script>"""
