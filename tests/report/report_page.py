"""A report page as the tests read it: section ids, images, links, text; decoded data URIs; the checks every page
passes. (A module of its own: `from conftest import ...` would pick whichever conftest the session imported first.)"""

from __future__ import annotations

import base64
import io
from html.parser import HTMLParser

from PIL import Image

from djray.report.build import SECTIONS


class Page(HTMLParser):
    """What a report page holds: section ids, <img> (src, alt), every href/src, text by enclosing tag."""

    def __init__(self, html: str):
        super().__init__()
        self.sections, self.images, self.links, self.text = [], [], [], []
        self._stack: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a.get("id"))
        if tag == "img":
            self.images.append((a.get("src", ""), a.get("alt", "")))
        for k in ("src", "href"):
            if k in a:
                self.links.append(a[k])
        if tag not in ("img", "meta", "br"):
            self._stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self._stack:
            while self._stack.pop() != tag:
                pass

    def handle_data(self, data):
        self.text.append((tuple(self._stack), data))

    def within(self, tag: str) -> list[str]:
        return [d for stack, d in self.text if tag in stack]

    @property
    def all_text(self) -> str:
        return " ".join(d for _, d in self.text)


def decode(uri: str) -> Image.Image:
    head, _, payload = uri.partition(",")
    assert head.startswith("data:image/") and head.endswith(";base64"), head[:40]
    img = Image.open(io.BytesIO(base64.b64decode(payload)))
    img.load()
    return img


def check_page(html: str) -> Page:
    """Every section present, every picture an embedded image that decodes, no reference outside the page."""
    page = Page(html)
    assert page.sections == list(SECTIONS)
    assert page.images
    for src, alt in page.images:
        assert decode(src).size[0] > 0, alt
    assert all(link.startswith(("data:", "#")) for link in page.links), [x[:60] for x in page.links
                                                                     if not x.startswith(("data:", "#"))]
    return page
