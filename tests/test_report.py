"""``alexnet report``: one self-contained HTML file per run, checked as text and as Chromium shows it."""

import base64
import io
import re
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from alexnet import report
from alexnet.cli import main
from alexnet.data import locate
from chromium_page import check_page, chromium_or_skip
from data_fixtures import write_fashion_mnist

SECTIONS = ["summary", "config", "metrics", "curves", "confusion", "per-class", "samples", "mistakes", "filters",
            "neighbors"]
PNG_URI = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = tmp_path_factory.mktemp("fmnist")
    write_fashion_mnist(data, n_train=48, n_val=24)
    out = tmp_path_factory.mktemp("runs") / "run"
    code = main(["train", "--dataset", "fashion-mnist", "--data-dir", str(data), "--no-download", "--model",
                 "alexnet_owt", "--image-size", "63", "--batch-size", "16", "--epochs", "2", "--init", "torch",
                 "--no-progress", "--workers", "0", "--out", str(out)])  # fmt: skip
    assert code == 0
    return out


@pytest.fixture(scope="module")
def page(trained):
    """The default report: RUN_DIR/report.html, the checkpoint evaluated on the run's validation data."""
    assert main(["report", str(trained)]) == 0
    return trained / "report.html"


def sections_of(html: str) -> dict[str, str]:
    return dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', html, flags=re.S))


def test_report_is_one_self_contained_file(page):
    html = page.read_text()
    # Nothing outside the file: every src is an embedded PNG, every href an anchor in the page.
    refs = re.findall(r'\b(src|href)="([^"]*)"', html)
    assert refs and all(v.startswith("data:image/png;base64,") if k == "src" else v.startswith("#") for k, v in refs)
    assert "<link" not in html and "@import" not in html and "url(" not in html
    sections = sections_of(html)
    assert list(sections) == SECTIONS
    pictures = PNG_URI.findall(html)
    assert len(pictures) == 6  # curves, confusion matrix, samples, mistakes, filters, neighbors
    assert "64 first-layer kernels of alexnet_owt" in sections["filters"] and PNG_URI.search(sections["filters"])
    assert "Figure 4" in sections["neighbors"] and PNG_URI.search(sections["neighbors"])
    for data in pictures:
        with Image.open(io.BytesIO(base64.b64decode(data))) as im:
            assert im.format == "PNG" and im.width > 200 and im.height > 100
    assert "alexnet_owt" in sections["config"] and "resolved.class_names" in sections["config"]
    assert sections["metrics"].count("<tr>") == 1 + 2  # header and two epochs
    assert sections["per-class"].count("<tr>") == 1 + 10 and "T-shirt/top" in sections["per-class"]
    assert "checkpoints/best.pt" in sections["summary"] and "evaluated on 24 fashion-mnist" in sections["confusion"]


def test_report_text_is_escaped(trained):
    record = report.RunRecord(root=trained, config={"note": '<img src=x onerror="alert(1)">&'}, metrics=[],
                              checkpoint_path=trained / "checkpoints" / "best.pt", checkpoint={})  # fmt: skip
    body = report.config_section(record).body
    assert "<img" not in body and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp;" in body
    page = report.render_page("<script>x</script>", [report.Section("a", "<b>", "")])
    assert "<script>x</script>" not in page and "&lt;b&gt;" in page


def test_no_eval_uses_the_pictures_saved_by_training(trained, tmp_path, capsys):
    out = tmp_path / "new" / "folder" / "r.html"
    assert main(["report", str(trained), "--no-eval", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"report written to {out}"
    html = out.read_text()
    assert len(PNG_URI.findall(html)) == 5  # the four saved pictures and the filters (from the checkpoint)
    sections = sections_of(html)
    assert "Neighbors not drawn: they need the data (--no-eval)" in sections["neighbors"]
    for key in ("confusion", "per-class", "samples", "mistakes"):
        assert "saved at the end of training" in sections[key], key
    assert out.stat().st_mode & 0o044  # readable by others, not mkstemp's 0600
    assert [p.name for p in out.parent.iterdir()] == ["r.html"]


def test_without_the_data_the_report_falls_back_to_saved_pictures(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(locate.SYSTEM_DIRS, "fashion-mnist", ())
    monkeypatch.delenv("ALEXNET_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    out = tmp_path / "r.html"
    code = main(["report", str(trained), "--data-dir", str(tmp_path / "empty"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0
    assert err.startswith("alexnet report: warning: the validation data could not be loaded") and err.count("\n") == 1
    html = out.read_text()
    assert "could not be loaded" in sections_of(html)["summary"] and len(PNG_URI.findall(html)) == 5  # + filters


def _no_metrics(trained, tmp_path):
    (tmp_path / "run").mkdir()
    return [str(tmp_path / "run")], "has no metrics.csv"


def _no_checkpoint(trained, tmp_path):
    (tmp_path / "run").mkdir()
    shutil.copy(trained / "metrics.csv", tmp_path / "run")
    return [str(tmp_path / "run")], "has no checkpoint"


def _empty_metrics(trained, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.csv").write_text("epoch,lr,train_loss,train_acc,val_loss,val_top1\n")
    return [str(tmp_path / "run")], "has no rows"


def _garbled_metrics(trained, tmp_path):
    shutil.copytree(trained, tmp_path / "run")
    text = (trained / "metrics.csv").read_text().splitlines()
    (tmp_path / "run" / "metrics.csv").write_text("\n".join([text[0], "1,0.1,x,0.5,1.0,0.5,0.9,1,1"]) + "\n")
    return [str(tmp_path / "run")], "is not a number"


def _corrupt_checkpoint(trained, tmp_path):
    shutil.copytree(trained, tmp_path / "run", ignore=shutil.ignore_patterns("*.pt"))
    (tmp_path / "run" / "checkpoints" / "best.pt").write_bytes(b"not a checkpoint")
    return [str(tmp_path / "run")], "is not a readable checkpoint"


def _out_under_a_file(trained, tmp_path):
    (tmp_path / "file").write_text("x")
    return [str(trained), "--out", str(tmp_path / "file" / "report.html")], "cannot write the report"


def _out_is_a_directory(trained, tmp_path):
    return [str(trained), "--out", str(tmp_path)], "it is a directory"


@pytest.mark.parametrize("case", [
    lambda trained, tmp_path: ([str(tmp_path / "missing")], "run directory not found"),
    _no_metrics, _empty_metrics, _garbled_metrics, _no_checkpoint, _corrupt_checkpoint, _out_under_a_file,
    _out_is_a_directory,
], ids=["missing", "no-metrics", "empty-metrics", "garbled-metrics", "no-checkpoint", "corrupt-checkpoint",
        "out-under-file", "out-is-dir"])  # fmt: skip
def test_bad_input_is_one_line(trained, tmp_path, capsys, case):
    args, message = case(trained, tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(["report", *args])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.startswith("alexnet report: error: ") and message in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no report, no temporary file left


def test_bad_input_from_the_shell_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "alexnet", "report", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"alexnet report: error: run directory not found: {tmp_path / 'nope'}\n"


# ---------------------------------------------------------------- as Chromium shows it


def test_report_in_chromium_every_picture_loads_and_no_console_errors(page):
    check = check_page(page, chromium_or_skip())
    assert check.checked, "the page's own check did not run"
    assert check.images_total == check.img_tags == 6
    assert check.images_broken == 0 and check.page_errors == 0
    assert check.console == []


def _picture() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, format="PNG")
    return report.embedded_png(buf.getvalue(), "a red square")


def test_chromium_check_passes_a_good_page(tmp_path):
    path = tmp_path / "good.html"
    path.write_text(report.render_page("good", [report.Section("a", "A", _picture())]))
    check = check_page(path, chromium_or_skip())
    assert check.ok and check.images_total == 1


def test_chromium_check_catches_a_broken_picture(tmp_path):
    path = tmp_path / "broken.html"
    broken = '<img src="data:image/png;base64,AAAA" alt="broken">'
    path.write_text(report.render_page("broken", [report.Section("a", "A", _picture() + broken)]))
    check = check_page(path, chromium_or_skip())
    assert not check.ok and check.images_total == 2 and check.images_broken == 1


def test_chromium_check_catches_a_script_error(tmp_path):
    path = tmp_path / "throws.html"
    throw = '<script>throw new Error("boom in the page");</script>'
    path.write_text(report.render_page("throws", [report.Section("a", "A", _picture() + throw)]))
    check = check_page(path, chromium_or_skip())
    assert not check.ok and check.images_broken == 0
    assert check.page_errors == 1  # the page's own count
    assert any("boom in the page" in line for line in check.console)  # and Chromium's log, independently
