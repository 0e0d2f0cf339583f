"""The evaluation's self-contained HTML report: tables and inline SVG plots, no dependencies.

Plots are drawn as plain SVG (no matplotlib, no JavaScript, no external files), so the report
opens in any browser, offline, from an artifact store download. Each plot is an
`<svg class="plot" data-plot="...">` element (tests/components/test_evaluate.py looks for them
in the DOM a headless browser renders).
"""
from __future__ import annotations

import html
import math

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def _e(text) -> str:
    return html.escape(str(text))


def _fmt(v, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if math.isfinite(v) else str(v)
    return _e(v)


def bar_chart(plot_id: str, title: str, categories: list[str], series: dict[str, list],
              intervals: dict[str, list] | None = None, threshold: float | None = None,
              xmax: float | None = None) -> str:
    """Horizontal grouped bars, optional [lower, upper] whiskers per bar and a threshold line."""
    intervals = intervals or {}
    label_w, plot_w, bar_h, gap = 190, 420, 12, 10
    n_series = max(len(series), 1)
    group_h = n_series * bar_h + gap
    height = 40 + len(categories) * group_h + 20 + 16 * n_series
    values = [v for vs in series.values() for v in vs if v is not None]
    values += [b for iv in intervals.values() for pair in iv if pair for b in pair if b is not None]
    top = xmax if xmax is not None else max([1e-9, *values, threshold or 0]) * 1.1
    x = lambda v: label_w + plot_w * max(0.0, min(v, top)) / top  # noqa: E731
    out = [f'<svg class="plot" data-plot="{_e(plot_id)}" xmlns="http://www.w3.org/2000/svg" '
           f'width="{label_w + plot_w + 70}" height="{height}" role="img" aria-label="{_e(title)}">',
           f'<text x="4" y="16" font-weight="bold" font-size="13">{_e(title)}</text>']
    for i, cat in enumerate(categories):
        y0 = 30 + i * group_h
        out.append(f'<text x="{label_w - 6}" y="{y0 + n_series * bar_h / 2 + 4}" text-anchor="end" '
                   f'font-size="11">{_e(cat)}</text>')
        for j, (name, vs) in enumerate(series.items()):
            v = vs[i]
            y = y0 + j * bar_h
            if v is None:
                continue
            out.append(f'<rect x="{label_w}" y="{y}" width="{x(v) - label_w:.1f}" height="{bar_h - 2}" '
                       f'fill="{COLORS[j % len(COLORS)]}"><title>{_e(cat)} {_e(name)}: {v:.4f}</title></rect>')
            out.append(f'<text x="{x(v) + 3:.1f}" y="{y + bar_h - 3}" font-size="9">{v:.3f}</text>')
            pair = (intervals.get(name) or [None] * len(categories))[i]
            if pair and None not in pair:
                ym = y + (bar_h - 2) / 2
                out.append(f'<line class="interval" x1="{x(pair[0]):.1f}" x2="{x(pair[1]):.1f}" y1="{ym}" y2="{ym}" '
                           f'stroke="black" stroke-width="1.5"/>')
                for b in pair:
                    out.append(f'<line x1="{x(b):.1f}" x2="{x(b):.1f}" y1="{ym - 4}" y2="{ym + 4}" stroke="black"/>')
    axis_y = 30 + len(categories) * group_h
    out.append(f'<line x1="{label_w}" x2="{label_w + plot_w}" y1="{axis_y}" y2="{axis_y}" stroke="#888"/>')
    for k in range(5):
        v = top * k / 4
        out.append(f'<text x="{x(v):.1f}" y="{axis_y + 12}" font-size="9" text-anchor="middle">{v:.2f}</text>')
    if threshold is not None:
        out.append(f'<line class="threshold" x1="{x(threshold):.1f}" x2="{x(threshold):.1f}" y1="24" y2="{axis_y}" '
                   f'stroke="#d62728" stroke-dasharray="4 3"><title>threshold {threshold}</title></line>')
    for j, name in enumerate(series):
        ly = axis_y + 28 + 16 * j
        out.append(f'<rect x="{label_w}" y="{ly - 9}" width="10" height="10" fill="{COLORS[j % len(COLORS)]}"/>'
                   f'<text x="{label_w + 14}" y="{ly}" font-size="11">{_e(name)}</text>')
    out.append("</svg>")
    return "".join(out)


def line_chart(plot_id: str, title: str, series: dict[str, tuple[list, list]], xlabel: str, ylabel: str,
               diagonal: bool = True) -> str:
    """Lines on [0, 1] x [0, 1] (ROC, reliability), with the diagonal for reference."""
    size, pad = 300, 40
    x = lambda v: pad + size * v  # noqa: E731
    y = lambda v: pad / 2 + size * (1 - v)  # noqa: E731
    out = [f'<svg class="plot" data-plot="{_e(plot_id)}" xmlns="http://www.w3.org/2000/svg" '
           f'width="{size + pad + 150}" height="{size + pad + 20}" role="img" aria-label="{_e(title)}">',
           f'<text x="{pad}" y="12" font-weight="bold" font-size="13">{_e(title)}</text>',
           f'<rect x="{x(0)}" y="{y(1)}" width="{size}" height="{size}" fill="none" stroke="#888"/>']
    if diagonal:
        out.append(f'<line x1="{x(0)}" y1="{y(0)}" x2="{x(1)}" y2="{y(1)}" stroke="#bbb" stroke-dasharray="3 3"/>')
    for k in range(6):
        v = k / 5
        out.append(f'<text x="{x(v)}" y="{y(0) + 12}" font-size="9" text-anchor="middle">{v:.1f}</text>'
                   f'<text x="{x(0) - 4}" y="{y(v) + 3}" font-size="9" text-anchor="end">{v:.1f}</text>')
    out.append(f'<text x="{x(0.5)}" y="{y(0) + 26}" font-size="11" text-anchor="middle">{_e(xlabel)}</text>'
               f'<text x="10" y="{y(0.5)}" font-size="11" transform="rotate(-90 10 {y(0.5)})" '
               f'text-anchor="middle">{_e(ylabel)}</text>')
    for j, (name, (xs, ys)) in enumerate(series.items()):
        if not xs:
            continue
        pts = " ".join(f"{x(a):.1f},{y(b):.1f}" for a, b in zip(xs, ys))
        color = COLORS[j % len(COLORS)]
        out.append(f'<polyline class="curve" points="{pts}" fill="none" stroke="{color}" stroke-width="1.8"/>')
        out.append(f'<rect x="{x(1) + 10}" y="{y(1) + 16 * j}" width="10" height="10" fill="{color}"/>'
                   f'<text x="{x(1) + 24}" y="{y(1) + 16 * j + 9}" font-size="11">{_e(name)}</text>')
    out.append("</svg>")
    return "".join(out)


def table(headers: list[str], rows: list[list], row_classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for i, r in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


_CSS = """body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}tr.fail td{background:#fde0e0}tr.pass td{background:#e3f6e3}
tr.ungated td{color:#888}.verdict{font-size:20px;padding:8px 12px;display:inline-block;border-radius:4px}
.blessed{background:#d8f5d8}.rejected{background:#fbd5d5}.plots{display:flex;flex-wrap:wrap;gap:18px}
h2{border-bottom:1px solid #ddd;padding-bottom:3px;margin-top:28px}
.samples{display:flex;flex-wrap:wrap;gap:10px}.sample{margin:0;text-align:center;font-size:12px}
.sample img{width:84px;image-rendering:pixelated;border:3px solid #9c9}.sample.wrong img{border-color:#d62728}
.sample.wrong figcaption{color:#d62728;font-weight:bold}.decoded .sample img{width:56px;border:0}"""


def render(ev: dict, blessing: dict, task) -> str:
    """The report HTML from evaluation.json's and blessing.json's content; `task` (models/tasks/)
    adds its own summary, tables and plots."""
    overall = ev["overall"]
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>kfx evaluation: {_e(ev['model'])}</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>Evaluation of {_e(ev['model'])}</h1>",
             f"<p>Split <b>{_e(ev['split'])}</b>, {ev['rows']:,} rows; {_e(task.NAME)} task, label "
             f"<b>{_e(ev['label'])}</b>{task.report_summary(ev)}; evaluated in {ev['seconds']:.1f}s.</p>",
             f"<div class='verdict {'blessed' if blessing['blessed'] else 'rejected'}'>"
             f"{'BLESSED' if blessing['blessed'] else 'NOT BLESSED'}</div>"]
    if blessing["reasons"]:
        parts.append("<ul>" + "".join(f"<li>{_e(r)}</li>" for r in blessing["reasons"]) + "</ul>")
    parts.append(f"<p>Baseline: {_e(ev['baseline']['note'])}</p>")

    parts.append("<h2>Checks</h2>")
    parts.append(table(["check", "value", "bound", "threshold", "result"],
                       [[c["name"], c["value"], c["bound"], c["threshold_text"],
                         "pass" if c["passed"] else "FAIL"] for c in blessing["checks"]],
                       ["pass" if c["passed"] else "fail" for c in blessing["checks"]]))

    metric_names = [m for m in ev["metric_names"] if m in overall]
    parts.append("<h2>Overall</h2>")
    base_overall = (ev["baseline"].get("overall") or {}) if ev["baseline"].get("uri") else {}
    rows = [[m, overall.get(m), base_overall.get(m),
             (overall[m] - base_overall[m]) if overall.get(m) is not None and base_overall.get(m) is not None else None]
            for m in metric_names]
    parts.append(table(["metric", "candidate", "baseline", "change"], rows))
    tables, plots = task.report_sections(ev)
    parts += tables
    if base_overall:
        shown = [m for m in metric_names if overall.get(m) is not None and base_overall.get(m) is not None]
        plots.append(bar_chart("baseline", "Baseline vs candidate", shown,
                               {"candidate": [overall[m] for m in shown], "baseline": [base_overall[m] for m in shown]}))
    parts.append("<div class='plots'>" + "".join(plots) + "</div>")
    if ev.get("samples"):  # image models (components/evaluation/samples.py)
        from kfx.components.evaluation.samples import render as render_samples

        parts.append(render_samples(ev["samples"]))
    if ev.get("decoded_samples"):  # generative models (components/evaluation/decoded.py)
        from kfx.components.evaluation.decoded import render as render_decoded

        parts.append(render_decoded(ev["decoded_samples"]))
    if ev.get("robustness"):  # components/evaluation/robustness.py
        from kfx.components.evaluation.robustness import render as render_robustness

        parts.append(render_robustness(ev["robustness"]))
    if ev.get("explanations"):  # components/evaluation/explain.py
        from kfx.components.evaluation.explain import render as render_explanations

        parts.append(render_explanations(ev["explanations"]))

    parts.append("<h2>Slices</h2>")
    slice_plots = []
    main = [m for m in task.SLICE_PLOT if m in metric_names] or metric_names[:2]
    for spec in ev["slices"]:
        vals = spec["values"]
        cats = [f"{v['value']} (n={v['count']})" for v in vals]
        slice_plots.append(bar_chart(f"slice-{spec['name']}", f"{', '.join(main)} by {spec['name']}", cats,
                                     {m: [v["metrics"].get(m) for v in vals] for m in main},
                                     xmax=task.slice_plot_max()))
        parts.append(f"<h3>{_e(spec['name'])}</h3>")
        parts.append(table(["slice", "rows", "gated", *metric_names],
                           [[v["value"], v["count"], v["gated"], *[v["metrics"].get(m) for m in metric_names]]
                            for v in vals], ["" if v["gated"] else "ungated" for v in vals]))
    parts.append("<div class='plots'>" + "".join(slice_plots) + "</div>")

    if ev.get("fairness"):
        parts.append("<h2>Fairness</h2><p>Gaps across groups (fairlearn's definitions, between groups) with "
                     f"{ev['fairness_settings']['confidence']:.0%} bootstrap intervals over "
                     f"{ev['fairness_settings']['bootstrap_resamples']} resamples (seed "
                     f"{ev['fairness_settings']['seed']}); dashed red line: gate threshold.</p>")
        thresholds = {(c.get("feature"), c.get("metric")): c["threshold"] for c in blessing["checks"]
                      if c["kind"] == "fairness"}
        fair_plots = []
        for feature, fr in ev["fairness"].items():
            gap_names = [g for g in task.FAIRNESS_METRICS if g.endswith("difference")]
            th = next((thresholds[(feature, g)].get("max") for g in gap_names if (feature, g) in thresholds), None)
            fair_plots.append(bar_chart(
                f"fairness-{feature}", f"Fairness gaps by {feature}", gap_names,
                {"gap": [fr["gaps"][g]["value"] for g in gap_names]},
                {"gap": [(fr["gaps"][g]["lower"], fr["gaps"][g]["upper"]) for g in gap_names]}, threshold=th))
            missing = f" ({fr['missing']} rows without a value left out)" if fr.get("missing") else ""
            parts.append(f"<h3>{_e(feature)}{_e(missing)}</h3>")
            parts.append(table(["gap", "value", "lower", "upper"],
                               [[g, v["value"], v["lower"], v["upper"]] for g, v in fr["gaps"].items()]))
            group_cols = list(next(iter(fr["groups"].values()), {}))
            parts.append(table(["group", *group_cols],
                               [[name, *[g.get(c) for c in group_cols]] for name, g in fr["groups"].items()]))
        parts.append("<div class='plots'>" + "".join(fair_plots) + "</div>")

    mit = ev.get("mitigation")
    if mit:
        feature = mit["feature"]
        parts.append(f"<h2>Mitigation: per-group thresholds ({_e(mit['objective'])}, on {_e(feature)})</h2>"
                     f"<p>Thresholds chosen on the {_e(mit['split'])} split, applied to {_e(ev['split'])}. "
                     f"{'The gate uses the mitigated decisions.' if mit['gated'] else 'The gate uses the model as is; these are shown for comparison.'}"
                     "</p>")
        parts.append(table(["group", "threshold"], [[g, t] for g, t in mit["thresholds"].items()]))
        before, after = ev["fairness"][feature], mit["fairness"]
        rows = [[g, before["gaps"][g]["value"], after["gaps"][g]["value"], after["gaps"][g]["lower"],
                 after["gaps"][g]["upper"]] for g in before["gaps"]]
        rows += [[m, overall.get(m), mit["overall"].get(m), None, None] for m in ("accuracy", "precision", "recall")]
        parts.append(table(["metric", "before", "after", "after lower", "after upper"], rows))
        groups = list(before["groups"])
        rate = "tpr" if mit["objective"] == "equal_opportunity" else "selection_rate"
        parts.append("<div class='plots'>" + bar_chart(
            "mitigation", f"{rate} by {feature}: before vs after mitigation", groups,
            {"before": [before["groups"][g][rate] for g in groups],
             "after": [after["groups"][g][rate] for g in groups]}) + bar_chart(
            "mitigation-gaps", "Fairness gaps before vs after", list(before["gaps"]),
            {"before": [before["gaps"][g]["value"] for g in before["gaps"]],
             "after": [after["gaps"][g]["value"] for g in after["gaps"]]},
            {"after": [(after["gaps"][g]["lower"], after["gaps"][g]["upper"]) for g in after["gaps"]]}) + "</div>")
    parts.append("<h2>How to read this report</h2><p>Every check of the gate is listed with its value, the "
                 "confidence bound it was judged on (fairness checks may gate on the bound rather than the "
                 "point estimate) and its threshold. Slices below the minimum size are greyed: reported, not "
                 "gated. Predictions per row are in the <code>predictions</code> artifact for audits.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
