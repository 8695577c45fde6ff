"""``alexnet summary``: the torchinfo table and its totals, through the real entry points."""

import subprocess
import sys

import pytest

from alexnet.cli import main


def test_summary_paper_at_227(capsys):
    assert main(["summary", "--model", "alexnet_paper"]) == 0
    out = capsys.readouterr().out
    assert "[1, 96, 55, 55]" in out and "[1, 256, 6, 6]" in out
    assert "parameters: 62,378,344" in out
    # conv1 multiply-adds with bias, as torchinfo counts them: (96*3*121 + 96) * 55 * 55
    assert f"{(96 * 3 * 121 + 96) * 55 * 55:,}" in out


def test_summary_one_channel_small_input(capsys):
    assert main(["summary", "--model", "alexnet_owt", "--in-channels", "1", "--image-size", "63", "--num-classes", "10"]) == 0
    out = capsys.readouterr().out
    # 61,100,840 - conv1's two missing input channels (2*64*121) - fc8 for 990 fewer classes (990*4097)
    assert f"parameters: {61_100_840 - 2 * 64 * 121 - 990 * 4097:,}" in out


def test_summary_too_small_is_one_line(capsys):
    assert main(["summary", "--model", "alexnet_owt", "--image-size", "40"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "too small" in err and "63" in err


def test_unknown_model_is_one_line(capsys):
    assert main(["summary", "--model", "vgg16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown model 'vgg16'" in err


@pytest.mark.parametrize("entry", [[sys.executable, "-m", "alexnet"]])
def test_module_entry_point(entry):
    done = subprocess.run(entry + ["summary", "--model", "alexnet_paper_grouped"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "parameters: 60,965,224" in done.stdout
