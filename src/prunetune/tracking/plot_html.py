"""The interactive front: one self-contained HTML page (inline SVG, a few lines of script, no library).

Every finished trial is a point (front points blue and labelled, dominated ones grey); hovering a
point or a table row highlights both and shows the trial's numbers; clicking a point opens its
MLflow run when ``run_url`` is given. The table below lists every trial, sortable by clicking a
column header. MLflow shows HTML artifacts inline, so ``front.html`` on the search run is browsable
there; it also opens from disk in any browser.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable

from prunetune.tracking.pareto import front_mask
from prunetune.tracking.records import SearchRecords, TrialRecord

W, H, LEFT, RIGHT, TOP, BOTTOM = 720, 440, 64, 24, 36, 48

_SCRIPT = """
const rows = document.querySelectorAll('tr[data-i]'), dots = document.querySelectorAll('circle[data-i]');
const info = document.getElementById('info');
function mark(i, on) {
  document.querySelectorAll('[data-i="' + i + '"]').forEach(e => e.classList.toggle('hot', on));
  if (on) info.textContent = document.querySelector('tr[data-i="' + i + '"]').dataset.text;
}
[...rows, ...dots].forEach(e => {
  e.addEventListener('mouseenter', () => mark(e.dataset.i, true));
  e.addEventListener('mouseleave', () => mark(e.dataset.i, false));
});
dots.forEach(d => d.addEventListener('click', () => { if (d.dataset.url) window.open(d.dataset.url, '_blank'); }));
document.querySelectorAll('th').forEach((th, c) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0], up = th.dataset.up !== '1';
  th.dataset.up = up ? '1' : '0';
  const key = r => { const t = r.cells[c].dataset.v ?? r.cells[c].textContent; const n = parseFloat(t);
                     return isNaN(n) ? t : n; };
  [...body.rows].sort((a, b) => (key(a) > key(b) ? 1 : key(a) < key(b) ? -1 : 0) * (up ? 1 : -1))
                .forEach(r => body.appendChild(r));
}));
"""

_STYLE = """
body { font: 13px system-ui, sans-serif; margin: 16px; color: #222; }
circle { cursor: pointer; } circle.front { fill: #1f77b4; } circle.other { fill: #aaa; }
circle.hot { stroke: #ff7f0e; stroke-width: 3; } tr.hot { background: #ffe8cc; }
table { border-collapse: collapse; margin-top: 12px; } th { cursor: pointer; background: #eee; }
td, th { padding: 2px 8px; text-align: right; } td:first-child, th:first-child { text-align: left; }
#info { min-height: 1.4em; font-weight: 600; } .axis { stroke: #444; } .grid { stroke: #e4e4e4; }
"""


def front_html(records: SearchRecords, *, budget: float | None = None, picked: str | None = None,
               run_url: Callable[[str], str] | None = None) -> str:
    """The page for ``records`` (``budget``: default the search's; ``picked``: a run id to mark)."""
    trials = list(records.trials)
    budget = records.budget if budget is None else budget
    on = front_mask([t.accuracy for t in trials], [t.macs for t in trials]) if trials else []
    title = f"{records.experiment}: {len(trials)} finished trials, {int(sum(on))} on the front"
    svg = _svg(trials, list(on), budget, records.dense.get("val_accuracy"), picked, run_url)
    rows = "\n".join(_row(i, t, bool(f), t.run_id == picked) for i, (t, f) in enumerate(zip(trials, on)))
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>\n<h3>{html.escape(title)}</h3>\n"
            f"<div id='info'>hover a point or a row</div>\n{svg}\n<table><thead><tr><th>trial</th><th>val acc</th>"
            "<th>test acc</th><th>MACs %</th><th>params</th><th>proxy acc</th><th>front</th><th>run</th></tr></thead>"
            f"<tbody>\n{rows}\n</tbody></table>\n<script>{_SCRIPT}</script></body></html>\n")


def _svg(trials: list[TrialRecord], on: list[bool], budget: float | None, dense: float | None, picked: str | None,
         run_url: Callable[[str], str] | None) -> str:
    xs = [100 * t.macs_ratio for t in trials] + ([100 * budget] if budget else [])
    ys = [100 * t.accuracy for t in trials] + ([100 * dense] if dense else [])
    x0, x1 = _span(xs)
    y0, y1 = _span(ys)

    def px(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * (W - LEFT - RIGHT)

    def py(y: float) -> float:
        return H - BOTTOM - (y - y0) / (y1 - y0) * (H - TOP - BOTTOM)

    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{W}' height='{H}' viewBox='0 0 {W} {H}'>"]
    for v in _ticks(x0, x1):
        parts.append(f"<line class='grid' x1='{px(v):.1f}' x2='{px(v):.1f}' y1='{TOP}' y2='{H - BOTTOM}'/>"
                     f"<text x='{px(v):.1f}' y='{H - BOTTOM + 16}' text-anchor='middle'>{v:g}</text>")
    for v in _ticks(y0, y1):
        parts.append(f"<line class='grid' x1='{LEFT}' x2='{W - RIGHT}' y1='{py(v):.1f}' y2='{py(v):.1f}'/>"
                     f"<text x='{LEFT - 6}' y='{py(v) + 4:.1f}' text-anchor='end'>{v:g}</text>")
    parts.append(f"<text x='{(LEFT + W - RIGHT) / 2}' y='{H - 10}' text-anchor='middle'>MACs (% of dense)</text>"
                 f"<text transform='translate(16 {(TOP + H - BOTTOM) / 2}) rotate(-90)' text-anchor='middle'>"
                 "validation accuracy (%)</text>")
    if budget:
        parts.append(f"<line x1='{px(100 * budget):.1f}' x2='{px(100 * budget):.1f}' y1='{TOP}' y2='{H - BOTTOM}' "
                     f"stroke='#d62728' stroke-dasharray='5 4'/><text x='{px(100 * budget) + 4:.1f}' y='{TOP + 12}' "
                     f"fill='#d62728'>budget {100 * budget:.0f}%</text>")
    if dense:
        parts.append(f"<line x1='{LEFT}' x2='{W - RIGHT}' y1='{py(100 * dense):.1f}' y2='{py(100 * dense):.1f}' "
                     "stroke='#666' stroke-dasharray='2 3'/>")
    front = sorted((100 * t.macs_ratio, 100 * t.accuracy) for t, f in zip(trials, on) if f)
    if front:
        steps = [f"{px(front[0][0]):.1f},{py(front[0][1]):.1f}"]
        for (xa, ya), (xb, yb) in zip(front, front[1:]):
            steps += [f"{px(xb):.1f},{py(ya):.1f}", f"{px(xb):.1f},{py(yb):.1f}"]
        parts.append(f"<polyline points='{' '.join(steps)}' fill='none' stroke='#1f77b4' stroke-opacity='0.5'/>")
    for i, (t, f) in enumerate(zip(trials, on)):
        x, y = px(100 * t.macs_ratio), py(100 * t.accuracy)
        url = f" data-url='{html.escape(run_url(t.run_id))}'" if run_url else ""
        ring = " stroke='#ff7f0e' stroke-width='2'" if t.run_id == picked else ""
        parts.append(f"<circle data-i='{i}' class='{'front' if f else 'other'}' cx='{x:.1f}' cy='{y:.1f}' "
                     f"r='{6 if f else 4}'{ring}{url}><title>{html.escape(_text(t))}</title></circle>")
        if f or len(trials) <= 16:
            parts.append(f"<text x='{x + 7:.1f}' y='{y - 6:.1f}' font-size='11' fill='{'#1f77b4' if f else '#888'}'>"
                         f"{html.escape(t.name)}</text>")
    parts.append(f"<rect x='{LEFT}' y='{TOP}' width='{W - LEFT - RIGHT}' height='{H - TOP - BOTTOM}' "
                 "fill='none' class='axis'/></svg>")
    return "\n".join(parts)


def _row(i: int, t: TrialRecord, front: bool, picked: bool) -> str:
    cells = [html.escape(t.name + (" (picked)" if picked else "")), _num(t.accuracy), _num(t.test_accuracy),
             f"{100 * t.macs_ratio:.2f}", f"{t.params / 1e6:.4f}M" if _finite(t.params) else "-",
             _num(t.proxy_accuracy), "yes" if front else "", html.escape(t.run_id[:12])]
    data = f"<td data-v='{t.params if _finite(t.params) else ''}'>" if _finite(t.params) else "<td>"
    tds = "".join((data if j == 4 else "<td>") + c + "</td>" for j, c in enumerate(cells))
    return f"<tr data-i='{i}' data-text='{html.escape(_text(t))}'>{tds}</tr>"


def _text(t: TrialRecord) -> str:
    test = f", test acc {t.test_accuracy:.4f}" if _finite(t.test_accuracy) else ""
    return (f"{t.name}: val acc {t.accuracy:.4f}{test}, MACs {100 * t.macs_ratio:.2f}% of dense "
            f"({t.macs / 1e6:.2f}M), trial {t.trial_id}")


def _num(v: float | None) -> str:
    return f"{v:.4f}" if _finite(v) else "-"


def _finite(v: object) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _span(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if _finite(v)] or [0.0, 1.0]
    lo, hi = min(values), max(values)
    pad = max((hi - lo) * 0.08, 0.5)
    return lo - pad, hi + pad


def _ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    raw = (hi - lo) / count
    step = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    for m in (1, 2, 5, 10):
        if raw <= m * step:
            step *= m
            break
    start = math.ceil(lo / step) * step
    return [round(start + k * step, 6) for k in range(int((hi - start) / step) + 1)]
