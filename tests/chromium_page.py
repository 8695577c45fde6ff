"""Open an HTML file in headless Chromium and read back how it came out.

Two independent channels:
- the page's own check (alexnet/report.py's inline script) writes onto ``<body>`` how many
  pictures there are, how many did not load (naturalWidth 0) and how many script errors it
  saw; ``--dump-dom`` prints the DOM after the load event, so those attributes can be read;
- Chromium's own log (``--enable-logging=stderr``) prints every console message, including
  uncaught exceptions, as a ``CONSOLE`` line. The report writes nothing to the console, so any
  such line is a failure.
Without Chromium the caller skips, saying so; a Chromium that fails to run is a failure.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest

# As the project's machines run it: no sandbox (root), no GPU, nothing fetched in the background.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--enable-logging=stderr", "--v=0"]  # fmt: skip
CONSOLE = re.compile(r":CONSOLE[:(]\d+")


def chromium_or_skip() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("chromium not available: no chromium or chromium-browser on PATH "
                "(make test installs Debian's chromium when run as root)")  # fmt: skip


@dataclass
class PageCheck:
    checked: bool  # the page's own script ran to the end
    images_total: int
    images_broken: int
    page_errors: int
    img_tags: int  # <img> elements in the DOM Chromium built
    console: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.checked and self.images_broken == 0 and self.page_errors == 0 and not self.console


class _Body(HTMLParser):
    def __init__(self):
        super().__init__()
        self.attrs: dict[str, str] = {}
        self.img_tags = 0

    def handle_starttag(self, tag, attrs):
        if tag == "body":
            self.attrs = {k: v or "" for k, v in attrs}
        elif tag == "img":
            self.img_tags += 1


def check_page(path: Path, chromium: str, timeout: float = 120) -> PageCheck:
    with tempfile.TemporaryDirectory(prefix="alexnet-chromium-") as profile:
        proc = subprocess.run(
            [chromium, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", Path(path).resolve().as_uri()],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
    if proc.returncode != 0 or "<body" not in proc.stdout:
        raise AssertionError(f"chromium failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    body = _Body()
    body.feed(proc.stdout)
    a = body.attrs
    return PageCheck(
        checked=a.get("data-checked") == "yes",
        images_total=int(a.get("data-images-total", -1)),
        images_broken=int(a.get("data-images-broken", -1)),
        page_errors=int(a.get("data-page-errors", -1)),
        img_tags=body.img_tags,
        console=[line for line in proc.stderr.splitlines() if CONSOLE.search(line)],
    )
