"""The report's figures in one self-contained HTML page: plotly.js inlined once, gzip-compressed.

A report must open offline (a file mailed or copied off a cluster), so plotly.js cannot come from a CDN; inlined
as it ships it is most of the page. Here it is inlined gzip-compressed and base64-encoded (about 40% of its size),
and one script decompresses it with the browser's ``DecompressionStream`` (every current browser has it), runs
it, then draws each figure from its JSON. Each figure is a ``<div class="plotly-graph-div">`` and a
``<script type="application/json">`` with its data and layout, so nothing calls Plotly before it is loaded.
"""

from __future__ import annotations

import base64
import gzip
import html
import json
from functools import lru_cache

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
