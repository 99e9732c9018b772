"""The report rendered by a real browser (headless Chromium, network off): no console errors, every section there,
every image decoded, and a full-page PNG (kept as REPORT_SCREENSHOT when that variable names a path)."""

from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from browser import ENABLE, Chromium, chromium_path
from djray.report import write_report
from djray.report.build import SECTIONS

pytestmark = pytest.mark.slow

CHECK = """(async () => {
  const imgs = [...document.images];
  await Promise.all(imgs.map(i => i.decode().catch(() => null)));
  return {sections: [...document.querySelectorAll('section')].map(s => s.id),
          images: imgs.map(i => ({alt: i.alt, w: i.naturalWidth, h: i.naturalHeight, complete: i.complete})),
          height: document.documentElement.scrollHeight,
          resources: performance.getEntriesByType('resource').map(r => r.name)};
})()"""


@pytest.fixture(scope="module")
def chromium():
    binary = chromium_path()
    if binary is None:
        pytest.skip(f"headless Chromium not found. {ENABLE}")
    pytest.importorskip("websocket", reason=f"websocket-client is not installed. {ENABLE}")
    return binary


def test_report_in_headless_chromium(chromium, vision_output, tmp_path):
    out, manifest, _ = vision_output
    html = write_report(str(out), str(tmp_path / "report.html"), samples=6)
    browser = Chromium(chromium, tmp_path / "profile")
    try:
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.call(f"{domain}.enable")
        browser.call("Network.emulateNetworkConditions", offline=True, latency=0, downloadThroughput=-1,
                     uploadThroughput=-1)
        browser.call("Page.navigate", url=f"file://{html}")
        browser.wait_for("Page.loadEventFired")
        page = browser.evaluate(CHECK)
        shot = tmp_path / "report.png"
        browser.screenshot(shot)
        errors = browser.errors()
    finally:
        browser.close()
    assert errors == []
    assert page["sections"] == list(SECTIONS)
    assert page["resources"] == []  # nothing fetched beyond the page itself
    images = page["images"]
    assert len(images) >= 10 and sum(i["alt"].startswith("sample ") for i in images) == 6
    bad = [i for i in images if not (i["complete"] and i["w"] > 0 and i["h"] > 0)]
    assert bad == []
    png = Image.open(io.BytesIO(shot.read_bytes())).convert("RGB")
    assert png.width >= 1000 and png.height >= 0.9 * page["height"] > 2000  # the whole page, not one viewport
    assert np.asarray(png).std() > 20  # something was drawn
    if os.environ.get("REPORT_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["REPORT_SCREENSHOT"])
