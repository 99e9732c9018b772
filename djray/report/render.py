"""HTML of the report: one self-contained page (inline CSS, every picture a data: URI, no script, no external
reference). Every string that comes from data or config is escaped here."""

from __future__ import annotations

import difflib
from html import escape
from typing import Any

from djray import schema as S
from djray.report.samples import RejectExamples

EVIDENCE_SHOWN = 12  # evidence classes listed on a sample card

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums}.ok{color:#2a7a2a}.bad{color:#b00020;font-weight:bold}
.warn{background:#fff3cd;border:1px solid #e0c060;padding:6px 10px;margin:6px 0}
.plots{display:flex;flex-wrap:wrap;gap:12px}.plots figure{margin:0}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(470px,1fr));gap:14px}
.card{border:1px solid #ddd;border-radius:6px;padding:8px;display:flex;gap:10px;align-items:flex-start}
.card img{width:224px;height:auto;flex:none}.pair img{width:160px}.meta{font-size:12px;color:#555}
.pair{display:flex;gap:8px;align-items:flex-start;flex:none}.pair figure{margin:0;font-size:12px}
del{background:#fbd5d5;color:#8a1020}ins{background:#d4f2d4;color:#185c18;text-decoration:none}
.muted{color:#777;font-style:italic}
"""


def page(title: str, sections: list[tuple[str, str, str]]) -> str:
    """sections: (id, heading, inner html)."""
    toc = " · ".join(f'<a href="#{sid}">{escape(h)}</a>' for sid, h, _ in sections)
    body = "\n".join(f'<section id="{sid}"><h2>{escape(h)}</h2>\n{inner}\n</section>' for sid, h, inner in sections)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
            f'style-src \'unsafe-inline\'"><style>{CSS}</style></head>'
            f'<body><h1>{escape(title)}</h1><nav>{toc}</nav>\n{body}\n</body></html>\n')


def num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}"
    return f"{v:,}" if isinstance(v, int) else escape(str(v))


def table(head: list[str], rows: list[list[Any]], numeric: set[int] = frozenset()) -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f'<td class="n">{num(c)}</td>' if i in numeric else f"<td>{_cell(c)}</td>"
                                   for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{trs}</table>"


def _cell(c: Any) -> str:
    return c.html if isinstance(c, Raw) else escape("" if c is None else str(c))


class Raw:
    """Already-escaped HTML for a table cell."""

    def __init__(self, html: str):
        self.html = html


def img(uri: str | None, alt: str) -> str:
    if not uri:
        return f'<div class="muted">({escape(alt)}: image not decodable)</div>'
    return f'<img src="{uri}" alt="{escape(alt)}">'


def figure(uri: str, caption: str) -> str:
    return f'<figure><img src="{uri}" alt="{escape(caption)}"></figure>'


def muted(text: str) -> str:
    return f'<p class="muted">{escape(text)}</p>'


def word_diff(before: str | None, after: str | None) -> str:
    """The governed caption with words the governance removed in <del> and words it added in <ins>."""
    a, b = (before or "").split(), (after or "").split()
    out = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(escape(" ".join(a[i1:i2])))
            continue
        if i2 > i1:
            out.append(f"<del>{escape(' '.join(a[i1:i2]))}</del>")
        if j2 > j1:
            out.append(f"<ins>{escape(' '.join(b[j1:j2]))}</ins>")
    return " ".join(out)


def _source(row: dict[str, Any]) -> str:
    size = f"{row.get(S.IMG_WIDTH)}×{row.get(S.IMG_HEIGHT)}"
    return f"{row.get(S.KEY)} · {row.get(S.SRC_SHARD)}#{row.get(S.SRC_INDEX)} · {size}"


def sample_card(row: dict[str, Any], picture: str | None) -> str:
    kept = row.get(S.PATCH_IDX)
    grid = (row.get(S.GRID_H) or 0) * (row.get(S.GRID_W) or 0)
    lines = [f'<div class="meta">{escape(_source(row))}</div>']
    if kept is not None and grid:
        lines.append(f'<div class="meta">kept patches {len(kept)} / {grid} (dropped ones greyed)</div>')
    lines.append(f'<div><b>raw</b>: {escape(row.get(S.CAPTION_RAW) or "")}</div>')
    if S.CAPTION in row:
        lines.append(f'<div><b>governed</b> ({escape(str(row.get(S.CAPTION_SOURCE)))}): '
                     f'{word_diff(row.get(S.CAPTION_RAW), row.get(S.CAPTION))}</div>')
    if row.get(S.VIS_EVIDENCE) is not None:
        ev = ", ".join(row[S.VIS_EVIDENCE][:EVIDENCE_SHOWN]) or "none"
        if len(row[S.VIS_EVIDENCE]) > EVIDENCE_SHOWN:
            ev += f" … ({len(row[S.VIS_EVIDENCE]) - EVIDENCE_SHOWN} more)"
        lines.append(f'<div class="meta">evidence: {escape(ev)}</div>')
    if row.get(S.CLIP_SCORE) is not None:
        lines.append(f'<div class="meta">clip_score {row[S.CLIP_SCORE]:.3f}</div>')
    return f'<div class="card">{img(picture, "sample " + str(row.get(S.KEY)))}<div>{"".join(lines)}</div></div>'


def reject_block(ex: RejectExamples, pictures: list[str | None], twin_pictures: list[str | None]) -> str:
    cards = []
    for row, pic, twin, tpic in zip(ex.rows, pictures, ex.twins, twin_pictures):
        info = (f'<div class="meta">{escape(_source(row))}</div><div>{escape(row.get(S.DETAIL) or "")}</div>'
                f'<div class="meta">caption: {escape(row.get(S.CAPTION_RAW) or "")}</div>')
        left = f'<figure>{img(pic, "dropped " + str(row.get(S.KEY)))}<figcaption>dropped</figcaption></figure>'
        right = ""
        if twin is not None:
            right = (f'<figure>{img(tpic, "twin " + str(twin[1].get(S.KEY)))}<figcaption>{escape(twin[0])}: '
                     f'{escape(str(twin[1].get(S.KEY)))}</figcaption></figure>')
        cards.append(f'<div class="card"><div class="pair">{left}{right}</div><div>{info}</div></div>')
    return f'<h3>{escape(ex.stage)} · {escape(ex.reason)}</h3><div class="cards">{"".join(cards)}</div>'
