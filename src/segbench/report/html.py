"""The comparison report as a self-contained HTML page and as Markdown.

Both are rendered from one plain ``context`` dict (built by :func:`segbench.report.write_report`). The HTML
page needs no server and no network: styles are inlined, figures are PNG files linked by relative paths,
every other link points at a file beside the page.

Context keys: ``title``, ``created``, ``dataset``, ``split``, ``num_images``, ``columns`` (key, header,
description), ``rows`` (leaderboard rows), ``score_threshold``, ``warnings``, ``notes``, ``bootstrap``
(dict or None), ``per_class`` (``{method: {class: AP}}``), ``plots`` and ``overlays`` (lists of
``{"title", "src", "caption"}``), ``baselines`` (``{name: {"params": dict, "href": str}}``), ``files``
(list of ``(label, href)``) and ``config`` (YAML text).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from html import escape
from urllib.parse import quote

_LOWER_IS_BETTER = {"ms_per_image"}

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
.meta { color: #666; }
table { border-collapse: collapse; margin: 0.6rem 0; font-size: 0.92rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.55rem; text-align: right; }
th { background: #f3f3f3; } td.name, th.name { text-align: left; }
td.best { font-weight: bold; background: #eef7ee; }
.warn { background: #fff4e0; border-left: 4px solid #e69500; padding: 0.5rem 0.8rem; margin: 0.4rem 0; }
.note { background: #eef3fb; border-left: 4px solid #4a78c2; padding: 0.5rem 0.8rem; margin: 0.4rem 0; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #555; font-size: 0.9rem; }
pre { background: #f7f7f7; padding: 0.7rem; overflow-x: auto; font-size: 0.85rem; }
details { margin: 0.4rem 0; }
"""


def _fmt(v, key: str = "") -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int | float):
        return f"{v:.1f}" if key == "ms_per_image" else f"{v:.4f}"
    return str(v)


def _href(path: str) -> str:
    return quote(path, safe="/._-")


def _columns(ctx: Mapping) -> list[tuple[str, str, str]]:
    cols = list(ctx["columns"])
    if all(r.get("AP_class_aware") is None for r in ctx["rows"]):
        cols = [c for c in cols if c[0] != "AP_class_aware"]
    return cols


def _best(rows: Sequence[Mapping], key: str):
    vals = [r.get(key) for r in rows if r.get(key) is not None]
    if len(vals) < 2:
        return None
    return min(vals) if key in _LOWER_IS_BETTER else max(vals)


def _threshold_note(ctx: Mapping) -> str:
    thr = ctx.get("score_threshold")
    model = "" if thr is None else f"the model's detections with score ≥ {thr:g} and "
    return (
        "Segm AP columns are class-agnostic COCO mask AP (every detection may match every object; "
        "baselines predict no class). F1, PQ, foreground IoU and Dice come from one-to-one matching at mask "
        f"IoU 0.5; they count {model}every detection of the baselines (whose scores are uncalibrated "
        "proxies). AP ranks every detection of every method."
    )


# --------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------
def leaderboard_markdown(rows: Sequence[Mapping], columns: Sequence[tuple[str, str, str]]) -> str:
    """The leaderboard as a Markdown table (columns without any value are left out)."""
    cols = [c for c in columns if c[0] != "AP_class_aware" or any(r.get(c[0]) is not None for r in rows)]
    head = "| method | kind | " + " | ".join(h for _, h, _ in cols) + " |"
    sep = "|---|---|" + "|".join("---:" for _ in cols) + "|"
    body = [
        f"| {r['method']} | {r['kind']} | " + " | ".join(_fmt(r.get(k), k) for k, _, _ in cols) + " |"
        for r in rows
    ]
    return "\n".join([head, sep, *body])


def _bootstrap_lines(b: Mapping) -> list[str]:
    pct = round(100 * b["confidence"])
    lines = []
    for key, label in (("segm_agnostic_AP", "segm AP (class-agnostic)"), ("f1", "F1@0.5")):
        s = b[key]
        if s["difference"] is None or s["ci_low"] is None:
            lines.append(f"{label}: not available")
            continue
        lines.append(
            f"{label}: {b['a']} {_fmt(s['a'])} vs {b['b']} {_fmt(s['b'])}; difference {s['difference']:+.4f}, "
            f"{pct}% CI [{s['ci_low']:+.4f}, {s['ci_high']:+.4f}] "
            f"(share of resamples where {b['a']} is not better: {s['p_not_better']:.3f}; "
            f"{s['resamples_used']} resamples)"
        )
    return lines


def _bootstrap_intro(b: Mapping) -> str:
    return (
        f"Paired bootstrap over the {b['n_images']} images ({b['n_resamples']} resamples, seed {b['seed']}): "
        f"{b['a']} minus the best baseline, {b['b']}. Every resample is scored by the COCO evaluator."
    )


def render_markdown(ctx: Mapping) -> str:
    """The report as Markdown (``report.md``); figures are linked by relative paths."""
    out = [
        f"# {ctx['title']}",
        "",
        f"{ctx['dataset']} — split `{ctx['split']}`, {ctx['num_images']} images — {ctx['created']}",
        "",
    ]
    if ctx["warnings"]:
        out += ["## Warnings", ""] + [f"- {w}" for w in ctx["warnings"]] + [""]
    out += [
        "## Leaderboard",
        "",
        leaderboard_markdown(ctx["rows"], ctx["columns"]),
        "",
        _threshold_note(ctx),
        "",
    ]
    for method, per_class in (ctx.get("per_class") or {}).items():
        if per_class:
            out += [f"Per-class segm AP of {method}:", "", "| class | AP |", "|---|---:|"]
            out += [f"| {c} | {_fmt(v)} |" for c, v in per_class.items()] + [""]
    out += ["## Model vs best baseline", ""]
    if ctx.get("bootstrap"):
        out += [_bootstrap_intro(ctx["bootstrap"]), ""] + [
            f"- {x}" for x in _bootstrap_lines(ctx["bootstrap"])
        ]
        out += [""]
    out += [f"*{n}*" for n in ctx["notes"]] + ([""] if ctx["notes"] else [])
    out += ["## Figures", ""]
    for p in ctx["plots"]:
        out += [f"![{p['title']}]({_href(p['src'])})", "", p.get("caption", ""), ""]
    if ctx["overlays"]:
        out += ["## Examples", ""]
        for p in ctx["overlays"]:
            out += [
                f"### {p['title']}",
                "",
                f"![{p['title']}]({_href(p['src'])})",
                "",
                p.get("caption", ""),
                "",
            ]
    for sec in ctx.get("sections") or []:
        out += [f"## {sec['title']}", ""] + [*sec.get("text", []), ""]
        t = sec.get("table")
        if t:
            out += ["| " + " | ".join(t["header"]) + " |", "|" + "---|" * len(t["header"])]
            for row in t["rows"]:
                cells = list(row)
                if t.get("link_last") and cells[-1]:
                    cells[-1] = f"[overlay]({_href(cells[-1])})"
                out.append("| " + " | ".join(cells) + " |")
            out.append("")
        for p in sec.get("figures", []):
            out += [f"![{p['title']}]({_href(p['src'])})", "", p.get("caption", ""), ""]
    if ctx["baselines"]:
        out += ["## Fitted baseline parameters", ""]
        for name, b in ctx["baselines"].items():
            out += [f"### {name} ([{b['href']}]({_href(b['href'])}))", "", "```json"]
            out += [json.dumps(b["params"], indent=2), "```", ""]
    out += ["## Files", ""] + [f"- [{label}]({_href(href)})" for label, href in ctx["files"]] + [""]
    out += ["## Configuration", "", "```yaml", ctx["config"].rstrip(), "```", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------
def _html_leaderboard(ctx: Mapping) -> str:
    cols = _columns(ctx)
    rows = ctx["rows"]
    head = '<tr><th class="name">method</th><th class="name">kind</th>' + "".join(
        f'<th title="{escape(d)}">{escape(h)}</th>' for _, h, d in cols
    )
    body = []
    for r in rows:
        cells = [
            f'<td class="name">{escape(str(r["method"]))}</td>',
            f'<td class="name">{escape(r["kind"])}</td>',
        ]
        for k, _, _ in cols:
            v = r.get(k)
            best = v is not None and v == _best(rows, k)
            cls = ' class="best"' if best else ""
            cells.append(f"<td{cls}>{escape(_fmt(v, k))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table>\n{head}</tr>\n" + "\n".join(body) + "\n</table>"


def _figure_html(p: Mapping) -> str:
    cap = f"<figcaption>{escape(p.get('caption', ''))}</figcaption>" if p.get("caption") else ""
    return (
        f'<figure><a href="{escape(_href(p["src"]))}"><img src="{escape(_href(p["src"]))}" '
        f'alt="{escape(p["title"])}"></a>{cap}</figure>'
    )


def render_html(ctx: Mapping) -> str:
    """The report as one HTML page (``report.html``) that opens from disk in any browser."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(ctx['title'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(ctx['title'])}</h1>",
        f'<p class="meta">{escape(str(ctx["dataset"]))} — split <code>{escape(ctx["split"])}</code>, '
        f"{ctx['num_images']} images — {escape(ctx['created'])}</p>",
    ]
    if ctx["warnings"]:
        parts.append("<h2>Warnings</h2>")
        parts += [f'<div class="warn">{escape(w)}</div>' for w in ctx["warnings"]]
    parts += ["<h2>Leaderboard</h2>", _html_leaderboard(ctx), f"<p>{escape(_threshold_note(ctx))}</p>"]
    for method, per_class in (ctx.get("per_class") or {}).items():
        if per_class:
            rows = "".join(
                f'<tr><td class="name">{escape(str(c))}</td><td>{escape(_fmt(v))}</td></tr>'
                for c, v in per_class.items()
            )
            parts.append(
                f"<p>Per-class segm AP of {escape(method)}:</p>"
                f'<table><tr><th class="name">class</th><th>AP</th></tr>{rows}</table>'
            )
    parts.append("<h2>Model vs best baseline</h2>")
    if ctx.get("bootstrap"):
        b = ctx["bootstrap"]
        parts.append(f"<p>{escape(_bootstrap_intro(b))}</p><ul>")
        parts += [f"<li>{escape(x)}</li>" for x in _bootstrap_lines(b)]
        parts.append("</ul>")
    parts += [f'<div class="note">{escape(n)}</div>' for n in ctx["notes"]]
    parts.append("<h2>Figures</h2>")
    parts += [_figure_html(p) for p in ctx["plots"]]
    if ctx["overlays"]:
        parts.append("<h2>Examples</h2>")
        for p in ctx["overlays"]:
            parts += [f"<h3>{escape(p['title'])}</h3>", _figure_html(p)]
    for sec in ctx.get("sections") or []:
        parts.append(f"<h2>{escape(sec['title'])}</h2>")
        parts += [f"<p>{escape(x)}</p>" for x in sec.get("text", [])]
        t = sec.get("table")
        if t:
            head = "".join(f"<th>{escape(h)}</th>" for h in t["header"])
            body = []
            for row in t["rows"]:
                cells = [escape(c) for c in row]
                if t.get("link_last"):
                    cells[-1] = f'<a href="{escape(_href(row[-1]))}">overlay</a>' if row[-1] else ""
                body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
            parts.append(f"<table><tr>{head}</tr>" + "".join(body) + "</table>")
        parts += [_figure_html(p) for p in sec.get("figures", [])]
    if ctx["baselines"]:
        parts.append("<h2>Fitted baseline parameters</h2>")
        for name, b in ctx["baselines"].items():
            parts.append(
                f'<details open><summary>{escape(name)} — <a href="{escape(_href(b["href"]))}">'
                f"{escape(b['href'])}</a></summary><pre>{escape(json.dumps(b['params'], indent=2))}</pre></details>"
            )
    parts.append("<h2>Files</h2><ul>")
    parts += [f'<li><a href="{escape(_href(href))}">{escape(label)}</a></li>' for label, href in ctx["files"]]
    parts.append("</ul>")
    parts += ["<h2>Configuration</h2>", f"<pre>{escape(ctx['config'])}</pre>", "</body></html>", ""]
    return "\n".join(parts)
