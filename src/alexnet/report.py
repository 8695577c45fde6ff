"""``alexnet report``: one self-contained HTML page that shows a training run.

The page is a list of sections (``SECTIONS``): each is a function of the run (a
``RunRecord``) that returns a ``Section``, or None when it has nothing to say. To add one
write ``def something_section(run: RunRecord) -> Section | None`` and put it in ``SECTIONS``;
``figure`` turns any of the plots into an embedded picture.

Where the pictures come from: the curves from metrics.csv; the confusion matrix, per-class
accuracy, samples and mistakes from evaluating the run's checkpoint (best.pt, else last.pt)
on its validation split, exactly as ``alexnet eval`` does, so that all of them describe the
one model the checkpoint holds; the first-layer filters and the feature-space neighbors
(the paper's Figures 3 and 4) from the same checkpoint. Where that evaluation cannot be done (the data is not on
this machine, or ``--no-eval``), the pictures training saved in plots/ at the end of its
last epoch are used, and the page says so.

Self-contained: pictures are PNGs in base64 ``data:`` URIs, the style and the script are
inline, nothing is fetched. All text goes through ``html.escape``. The inline script checks
the page as it is shown: it records on ``<body>`` how many pictures there are, how many
failed to load (``naturalWidth == 0``) and how many script errors happened, and puts a
warning at the top when any did (the browser test reads these).
"""

from __future__ import annotations

import base64
import datetime
import html
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from . import plots
from .engine.checkpoint import build_model, read_checkpoint
from .errors import AlexNetError
from .paper.figures import draw_filters, draw_neighbors
from .run_dir import RunDirectory


@dataclass
class Section:
    key: str  # the HTML id, for the table of contents
    title: str
    body: str  # HTML, already escaped


@dataclass
class RunRecord:
    """What the sections draw from: the run directory's files and, when it could be done, a fresh evaluation."""

    root: Path
    config: dict[str, Any]
    metrics: list[dict[str, str]]
    checkpoint_path: Path
    checkpoint: dict[str, Any]  # as read with weights_only=True
    evaluation: Any = None  # engine.checkpoint_eval.CheckpointEvaluation, or None
    no_evaluation: str | None = None  # why there is none

    def saved_plot(self, name: str) -> Path | None:
        path = RunDirectory(self.root).plot(name)
        return path if path.is_file() else None

    def confusion(self) -> tuple[list[list[int]], list[str], str] | None:
        """(matrix, class names, where from): the fresh evaluation's, else plots/confusion.json's."""
        if self.evaluation is not None:
            return self.evaluation.result["confusion"], self.evaluation.class_names, self.evaluated_from()
        saved = RunDirectory(self.root).read_confusion()
        if saved is None:
            return None
        return *saved, "saved at the end of training (plots/confusion.json)"

    def evaluated_from(self) -> str:
        ev = self.evaluation
        return (f"{self.checkpoint_path.relative_to(self.root)} (epoch {self.checkpoint.get('epoch', '?')}) "
                f"evaluated on {ev.result['n']} {ev.info.name} validation images")  # fmt: skip


def load_run(root: str | os.PathLike, checkpoint: str = "best") -> RunRecord:
    """Read and check a run directory; one-line errors for what is missing or unreadable."""
    run = RunDirectory(root)
    root = run.root
    if not root.is_dir():
        raise AlexNetError(f"run directory not found: {root}")
    metrics_path = run.metrics_path
    if not metrics_path.is_file():
        raise AlexNetError(f"{root} has no metrics.csv: not a training run directory (alexnet train --out writes one)")
    metrics = run.read_metrics()
    if not metrics:
        raise AlexNetError(f"{metrics_path} has no rows: the run has not finished an epoch yet")
    needed = {"epoch", "train_loss", "train_acc", "val_loss", "val_top1"}
    if not needed <= set(metrics[0]):
        raise AlexNetError(f"{metrics_path} lacks the columns {', '.join(sorted(needed - set(metrics[0])))}")
    for row in metrics:
        try:
            [float(row[k]) for k in needed]
        except (TypeError, ValueError):
            raise AlexNetError(f"{metrics_path}: epoch {row.get('epoch')!r} has a value that is not a number") from None
    order = ("best", "last") if checkpoint == "best" else ("last",)
    candidates = [run.checkpoint(name) for name in order]
    found = [path for path in candidates if path.is_file()]
    if not found:
        names = " or ".join(str(path.relative_to(root)) for path in candidates)
        raise AlexNetError(f"{root} has no checkpoint: {names} does not exist")
    ckpt = read_checkpoint(found[0])
    build_model(ckpt, found[0])  # a checkpoint that does not fit its model is an error here, not half a page
    config = run.read_config()
    if config is None:  # an older run: the checkpoint carries the configuration too
        config = dict(ckpt.get("config") or {})
    return RunRecord(root=root, config=config, metrics=metrics, checkpoint_path=found[0], checkpoint=ckpt)


# ---------------------------------------------------------------- HTML pieces


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def figure(draw: Callable[[Path], Path], alt: str, caption: str = "") -> str:
    """Run ``draw(path)`` (one of the plots functions, bound to its data) and embed the PNG it writes."""
    with tempfile.TemporaryDirectory(prefix="alexnet-report-") as tmp:
        path = draw(Path(tmp) / "figure.png")
        return embedded_png(Path(path).read_bytes(), alt, caption)


def saved_figure(path: Path, alt: str, caption: str = "") -> str:
    return embedded_png(path.read_bytes(), alt, caption)


def embedded_png(png: bytes, alt: str, caption: str = "") -> str:
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{esc(alt)}">{cap}</figure>'


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[bool] | None = None) -> str:
    numeric = numeric or [False] * len(header)
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td{" class=num" if num else ""}>{esc(v)}</td>' for v, num in zip(row, numeric)) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def paragraph(text: str) -> str:
    return f"<p>{esc(text)}</p>"


def unavailable(what: str, run: RunRecord) -> str:
    why = f" ({run.no_evaluation})" if run.no_evaluation else ""
    text = f"{what} not available: no evaluation of the checkpoint{why} and nothing saved in plots/."
    return f'<p class="missing">{esc(text)}</p>'


def percent(x: Any) -> str:
    return f"{100 * float(x):.2f}%"


# ---------------------------------------------------------------- the sections


def summary_section(run: RunRecord) -> Section:
    cfg, rows = run.config, run.metrics
    best = max(rows, key=lambda r: float(r["val_top1"]))
    items = [
        ("run directory", str(run.root)),
        ("model", cfg.get("model", run.checkpoint.get("model_args", {}).get("name", "?"))),
        ("dataset", cfg.get("dataset", "?")),
        ("epochs", f"{rows[-1]['epoch']} of {cfg.get('epochs', '?')}"),
        ("best validation top-1", f"{percent(best['val_top1'])} (epoch {best['epoch']})"),
        ("last validation top-1", f"{percent(rows[-1]['val_top1'])} (epoch {rows[-1]['epoch']})"),
    ]
    if run.evaluation is not None:
        r = run.evaluation.result
        items.append(("checkpoint evaluated", run.evaluated_from()))
        items.append(("its top-1, top-5, loss", f"{percent(r['top1'])}, {percent(r['top5'])}, {r['loss']:.4f}"))
    else:
        items.append(("checkpoint evaluated", f"none: {run.no_evaluation}; pictures from plots/"))
    body = "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items) + "</dl>"
    return Section("summary", "Summary", body)


def config_section(run: RunRecord) -> Section:
    rows = [(key, value if isinstance(value, str) else json.dumps(value)) for key, value in flatten(run.config)]
    body = paragraph("config.json, as resolved for the run.") + table(("setting", "value"), rows)
    return Section("config", "Configuration", body)


def flatten(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in d.items():
        if isinstance(value, dict):
            out += flatten(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


METRIC_FORMATS: dict[str, Callable[[str], str]] = {
    "lr": lambda v: f"{float(v):.3g}",
    "train_loss": lambda v: f"{float(v):.4f}",
    "val_loss": lambda v: f"{float(v):.4f}",
    "train_acc": percent,
    "val_top1": percent,
    "val_top5": percent,
    "images_per_s": lambda v: f"{float(v):.1f}",
    "epoch_time_s": lambda v: f"{float(v):.1f}",
}


def metrics_section(run: RunRecord) -> Section:
    header = list(run.metrics[0])
    rows = []
    for r in run.metrics:
        row = []
        for k in header:
            try:
                row.append(METRIC_FORMATS.get(k, str)(r[k]))
            except (TypeError, ValueError):
                row.append(r[k])
        rows.append(row)
    body = paragraph("metrics.csv: one row per epoch.") + table(header, rows, [True] * len(header))
    return Section("metrics", "Metrics", body)


def curves_section(run: RunRecord) -> Section:
    body = figure(lambda p: plots.plot_curves(run.metrics, p), "loss and accuracy per epoch", "From metrics.csv.")
    return Section("curves", "Loss and accuracy", body)


def confusion_section(run: RunRecord) -> Section:
    found = run.confusion()
    if found is None:
        return Section("confusion", "Confusion matrix", unavailable("The confusion matrix", run))
    matrix, names, source = found
    body = figure(lambda p: plots.plot_confusion(matrix, names, p), "confusion matrix",
                  f"Rows: true class, columns: predicted; shading row-normalised. Source: {source}.")  # fmt: skip
    return Section("confusion", "Confusion matrix", body)


def per_class_section(run: RunRecord) -> Section:
    found = run.confusion()
    if found is None:
        return Section("per-class", "Per-class accuracy", unavailable("Per-class accuracy", run))
    matrix, names, source = found
    rows = []
    for i, row in enumerate(matrix):
        n = sum(row)
        if n:
            rows.append((names[i], n, row[i], percent(row[i] / n)))
    header = ("class", "images", "correct", "accuracy")
    body = paragraph(f"Source: {source}.") + table(header, rows, (False, True, True, True))
    return Section("per-class", "Per-class accuracy", body)


def evaluated_or_saved(run: RunRecord, draw: Callable[[Path], Path] | None, caption: str, alt: str,
                       saved: str, what: str) -> str:  # fmt: skip
    """A figure drawn from this report's evaluation, else the one saved in plots/ by training, else a note."""
    if draw is not None:
        return figure(draw, alt, caption)
    path = run.saved_plot(saved)
    if path is not None:
        return saved_figure(path, alt, f"Source: saved at the end of training (plots/{saved}).")
    return unavailable(what, run)


def samples_section(run: RunRecord) -> Section:
    ev, draw, caption = run.evaluation, None, ""
    if ev is not None and ev.result["samples"]:
        images, labels, probs = zip(*ev.result["samples"])

        def draw(path: Path) -> Path:
            return plots.plot_predictions(images, probs, ev.class_names, path, true_labels=labels,
                                          mean=ev.info.mean, std=ev.info.std)  # fmt: skip

        caption = (f"The first validation images and the model's three most likely classes (green: the true "
                   f"class). Source: {run.evaluated_from()}.")  # fmt: skip
    body = evaluated_or_saved(run, draw, caption, "validation samples with their top-3 predicted classes",
                              "samples.png", "Samples")  # fmt: skip
    return Section("samples", "Samples and predictions", body)


def mistakes_section(run: RunRecord) -> Section:
    ev, draw, caption = run.evaluation, None, ""
    if ev is not None:
        mistakes = ev.result["mistakes"]
        if not mistakes:
            return Section("mistakes", "Mistakes", paragraph(f"No mistakes: {run.evaluated_from()}."))
        names = ev.class_names

        def draw(path: Path) -> Path:
            titles = [f"true {names[true]}\npred {names[pred]}" for _, true, pred in mistakes]
            return plots.plot_images([m[0] for m in mistakes], titles, path, mean=ev.info.mean, std=ev.info.std)

        caption = f"Misclassified validation images ({len(mistakes)} shown). Source: {run.evaluated_from()}."
    body = evaluated_or_saved(run, draw, caption, "misclassified validation images", "misclassified.png", "Mistakes")
    return Section("mistakes", "Mistakes", body)


def filters_section(run: RunRecord) -> Section:
    with tempfile.TemporaryDirectory(prefix="alexnet-report-") as tmp:
        path = Path(tmp) / "filters.png"
        found = draw_filters(run.checkpoint, run.checkpoint_path, path)
        caption = (f"{found} of {run.checkpoint_path.relative_to(run.root)}, each scaled to its own range: the "
                   "paper's Figure 3. For alexnet_paper_grouped the two blocks are the halves that feed conv2's "
                   "two groups.")  # fmt: skip
        body = embedded_png(path.read_bytes(), "first-layer convolution kernels", caption)
    return Section("filters", "First-layer filters", body)


def neighbors_section(run: RunRecord) -> Section:
    """The paper's Figure 4 for the first validation images; needs the data, like the evaluation."""
    title = "Nearest neighbors in feature space"
    ev = run.evaluation
    if ev is None:
        why = f" ({run.no_evaluation})" if run.no_evaluation else ""
        return Section("neighbors", title, f'<p class="missing">{esc(f"Neighbors not drawn: they need the data{why}.")}</p>')
    with tempfile.TemporaryDirectory(prefix="alexnet-report-") as tmp:
        path = Path(tmp) / "neighbors.png"
        draw_neighbors(run.checkpoint, run.checkpoint_path, path, index=list(range(min(4, ev.result["n"]))), k=5,
                       data_dir=ev.config.data_dir, subset=ev.config.subset, log=lambda _: None)  # fmt: skip
        caption = ("The first validation images (left) and the training images whose last hidden layer (4096-d, "
                   "fc7 after its ReLU) is nearest in Euclidean distance d: the paper's Figure 4. The training "
                   "features are cached in the run's cache/ folder.")  # fmt: skip
        body = embedded_png(path.read_bytes(), "validation images and their nearest training images", caption)
    return Section("neighbors", title, body)


# The page, top to bottom.
SECTIONS: list[Callable[[RunRecord], Section | None]] = [
    summary_section,
    config_section,
    metrics_section,
    curves_section,
    confusion_section,
    per_class_section,
    samples_section,
    mistakes_section,
    filters_section,
    neighbors_section,
]


# ---------------------------------------------------------------- the page

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; padding: 0 1em; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dt { font-weight: bold; } dd { margin: 0; }
figure { margin: 1em 0; } img { max-width: 100%; height: auto; } figcaption { color: #555; font-size: 0.9em; }
.missing { color: #a60; }
#page-check { display: none; background: #fdd; border: 1px solid #c00; padding: 0.5em; }
footer { margin-top: 3em; color: #777; font-size: 0.85em; }
"""

# First thing in <head>: count script errors (uncaught, and console.error) from then on.
ERROR_COUNTER = """
window.pageErrors = [];
window.addEventListener("error", function (e) { window.pageErrors.push(String(e.message || e)); });
(function () {
  var original = console.error;
  console.error = function () {
    window.pageErrors.push(Array.prototype.join.call(arguments, " "));
    original.apply(console, arguments);
  };
})();
"""

# Last thing in <body>: once everything has loaded, record how the page came out.
PAGE_CHECK = """
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var broken = images.filter(function (img) { return !(img.complete && img.naturalWidth > 0); });
  var body = document.body.dataset;
  body.imagesTotal = images.length;
  body.imagesBroken = broken.length;
  body.pageErrors = window.pageErrors.length;
  body.checked = "yes";
  if (broken.length || window.pageErrors.length) {
    var note = document.getElementById("page-check");
    note.textContent = broken.length + " picture(s) failed to load, " +
      window.pageErrors.length + " script error(s).";
    note.style.display = "block";
  }
});
"""


def render_page(title: str, sections: Sequence[Section], subtitle: str = "") -> str:
    nav = "".join(f'<a href="#{esc(s.key)}">{esc(s.title)}</a>' for s in sections)
    parts = "".join(f'<section id="{esc(s.key)}"><h2>{esc(s.title)}</h2>{s.body}</section>' for s in sections)
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{esc(title)}</title><script>{ERROR_COUNTER}</script><style>{STYLE}</style></head>\n"
        f"<body><div id=\"page-check\"></div><h1>{esc(title)}</h1>"
        + (f"<p>{esc(subtitle)}</p>" if subtitle else "")
        + f"<nav>{nav}</nav>\n{parts}\n"
        f"<footer>Written by alexnet report on {esc(when)}.</footer><script>{PAGE_CHECK}</script></body></html>\n"
    )


def build_report(run: RunRecord, sections: Sequence[Callable[[RunRecord], Section | None]] = SECTIONS) -> str:
    built = [s for s in (make(run) for make in sections) if s is not None]
    title = f"{run.config.get('model', 'AlexNet')} on {run.config.get('dataset', '?')}: {run.root.resolve().name}"
    return render_page(title, built, subtitle=f"Report of the training run in {run.root}.")


class ReportFile:
    """The output file, opened before any work so that an unwritable ``out`` fails at once.

    The page goes to a temporary file beside ``out``, renamed over it by ``write``; leaving the
    ``with`` block without writing removes the temporary file.
    """

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self.tmp: str | None = None

    def __enter__(self) -> ReportFile:
        if self.out.is_dir():
            raise AlexNetError(f"cannot write the report {self.out}: it is a directory")
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            fd, self.tmp = tempfile.mkstemp(prefix=f".{self.out.name}.", suffix=".tmp", dir=self.out.parent)
            os.close(fd)
        except OSError as e:
            raise AlexNetError(f"cannot write the report {self.out}: {e.strerror or e}") from None
        return self

    def write(self, page: str) -> None:
        assert self.tmp is not None
        try:
            Path(self.tmp).write_text(page, encoding="utf-8")
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the report from other users
            os.replace(self.tmp, self.out)
        except OSError as e:
            raise AlexNetError(f"cannot write the report {self.out}: {e.strerror or e}") from None
        self.tmp = None

    def __exit__(self, *exc) -> None:
        if self.tmp is not None:
            Path(self.tmp).unlink(missing_ok=True)
