"""Open a report in headless Chromium, offline, and read back what the page saw (shared by the
report tests). ``SAELAB_BROWSER_TEST=required`` (``make test``) fails when Chromium is missing;
otherwise such a test is skipped."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

# Injected first in <head>: records script errors, failed resources and console errors/warnings.
_CAPTURE_SCRIPT = """<script>
window.__errors = [];
window.addEventListener("error", function (e) {
  var t = e.target || {};
  window.__errors.push(e.message || ("failed to load " + (t.src || t.href || t.tagName)));
}, true);
["error", "warn"].forEach(function (level) {
  var original = console[level];
  console[level] = function () {
    window.__errors.push(level + ": " + Array.prototype.join.call(arguments, " "));
    return original.apply(console, arguments);
  };
});
</script>"""
# Injected before </body>: after load, writes what the page holds into <pre id="saelab-check">.
_CHECK_SCRIPT = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var out = document.createElement("pre");
  out.id = "saelab-check";
  out.textContent = JSON.stringify({
    loaded: images.map(function (i) { return i.complete && i.naturalWidth > 0; }),
    widths: images.map(function (i) { return i.naturalWidth; }),
    figures: document.querySelectorAll("section#plots figure img").length,
    tables: document.querySelectorAll("table").length,
    fetched: performance.getEntriesByType("resource")
      .map(function (e) { return e.name; })
      .filter(function (name) { return name.indexOf("data:") !== 0; }),
    errors: window.__errors
  });
  document.body.appendChild(out);
});
</script>"""


def chromium() -> str:
    """Path of the Chromium binary; skips (or fails when required) the test without one."""
    found = shutil.which("chromium")
    if not found and os.access("/usr/bin/chromium", os.X_OK):
        found = "/usr/bin/chromium"
    if found:
        return found
    if os.environ.get("SAELAB_BROWSER_TEST") == "required":
        pytest.fail("chromium is not installed and SAELAB_BROWSER_TEST=required (make browser)")
    pytest.skip("chromium is not installed (run `make browser`, or `make test`)")


def open_in_chromium(report: Path, tmp_path: Path) -> tuple[dict, str]:
    """Load a copy of ``report`` with the check scripts in headless Chromium, the network
    unreachable; returns the page's check record (images loaded and widths, figures, tables,
    fetched URLs, script / console errors) and Chromium's stderr."""
    binary = chromium()
    page = report.read_text("utf-8")
    page = page.replace("<head>", "<head>" + _CAPTURE_SCRIPT, 1)
    page = page.replace("</body>", _CHECK_SCRIPT + "</body>")
    copy = tmp_path / "check.html"
    copy.write_text(page, "utf-8")
    cmd = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--virtual-time-budget=10000",
        "--dump-dom",
        copy.as_uri(),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    match = re.search(r'<pre id="saelab-check">(.*?)</pre>', done.stdout, re.S)
    assert match, f"no check output (rc {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(html.unescape(match.group(1))), done.stderr
