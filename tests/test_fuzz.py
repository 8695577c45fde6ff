"""Fuzzing the command line: random arguments for every option of each command, and random
bytes given to predict as image files. Whatever comes in, the command either works or says
what is wrong in one line on stderr; it never raises, never reports an internal error and
never hangs.

The flags and their types are read from the real parser, so a new option is fuzzed as soon as
it exists. Each example runs in this process under an alarm; the default run is derandomized
(the same examples every time, so CI cannot flake); ``-m slow`` runs many more, seeded afresh.
"""

import contextlib
import io
import os
import random
import signal
from pathlib import Path

import argparse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from alexnet.cli import build_parser, main
from alexnet.cli import predict as predict_command
from alexnet.data import locate
from alexnet.engine.checkpoint import load_for_inference
from data_fixtures import write_fashion_mnist

# Commands whose every option is fuzzed, and the arguments that keep each run small: a train
# run is at most a few steps on 16 images. bench (minutes of timing) is left out.
COMMANDS = ("summary", "train", "eval", "predict", "export", "report")
NEVER = {"--download", "--compile", "--help"}  # network access; a minute of compiling; prints help


class Hang(BaseException):
    """Raised by the alarm; a BaseException so that nothing in the command can swallow it."""


@contextlib.contextmanager
def time_limit(seconds: int):
    def ring(signum, frame):
        raise Hang(f"no answer after {seconds} s")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run(argv: list[str]) -> tuple[int, str]:
    if os.environ.get("ALEXNET_FUZZ_LOG"):  # to find an example that hangs: the last line written
        with open(os.environ["ALEXNET_FUZZ_LOG"], "a") as f:
            f.write(repr(argv) + "\n")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()), time_limit(120):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse
            code = e.code
    return code, err.getvalue()


def check(argv: list[str], code, err: str) -> None:
    assert isinstance(code, int), (argv, code)
    assert "Traceback" not in err and "internal error" not in err, (argv, err)
    if code != 0:
        last = err.strip().splitlines()[-1] if err.strip() else ""
        assert last.startswith(("alexnet ", "usage: ")), (argv, err)
        assert last.count("\n") == 0 and len(last) < 1000, (argv, err)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tiny data, a small trained checkpoint and a working folder (the fuzzer's relative paths land there)."""
    root = tmp_path_factory.mktemp("fuzz")
    # Only the tiny data exists for the fuzzer: a --data-dir that misses it must not reach the
    # real 70,000 images (a legitimate minute of evaluation, not what is being tested).
    isolate = pytest.MonkeyPatch()
    isolate.setattr(locate, "SYSTEM_DIRS", {name: () for name in locate.SYSTEM_DIRS})
    isolate.delenv(locate.ENV_VAR, raising=False)
    write_fashion_mnist(root / "data", n_train=16, n_val=8)
    ckpt = root / "run" / "checkpoints" / "last.pt"
    code, err = run(["train", "--data-dir", str(root / "data"), "--out", str(root / "run"), "--no-progress",
                     "--max-steps", "1", "--epochs", "1", "--batch-size", "4", "--image-size", "63",
                     "--model", "alexnet_owt", "--init", "torch"])  # fmt: skip
    assert code == 0, err
    Image.new("L", (30, 20), 128).save(root / "image.png")
    cwd = os.getcwd()
    os.chdir(root / "data")
    yield root, ckpt
    os.chdir(cwd)
    isolate.undo()


def base_args(command: str, root: Path, ckpt: Path) -> list[str]:
    data = str(root / "data")
    return {
        "summary": ["--model", "alexnet_paper", "--image-size", "63"],
        "train": ["--data-dir", data, "--out", "fuzz-run", "--no-progress", "--max-steps", "1", "--epochs", "1",
                  "--batch-size", "4", "--image-size", "63", "--model", "alexnet_owt", "--workers", "0"],
        "eval": ["--checkpoint", str(ckpt), "--data-dir", data],
        "predict": ["--checkpoint", str(ckpt), str(root / "image.png")],
        "export": ["--checkpoint", str(ckpt), "--format", "torchscript", "--out", "model.pt"],
        "report": [str(root / "run"), "--out", "report.html"],
    }[command]  # fmt: skip


def options(command: str) -> list[argparse.Action]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return [a for a in sub.choices[command]._actions if a.option_strings and not set(a.option_strings) & NEVER]


INTS = st.one_of(st.integers(-2, 3).map(str), st.sampled_from(["x", "", "1.5", "-0", "0x10", "39", "63"]))
FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e-300", "1e38", "-1", "0", "abc", ""]),
)
TEXT = st.one_of(
    st.sampled_from(["", "x", "-", "/nonexistent/file", "cpu", "cuda", "cuda:7", "mps", "auto", "alexnet_paper",
                     "resnet50", "fashion-mnist", "..", "/", "/dev/null"]),  # fmt: skip
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12),
)


def value_for(action: argparse.Action) -> st.SearchStrategy[list[str]]:
    flag = action.option_strings[0]
    if isinstance(action, argparse.BooleanOptionalAction):
        return st.sampled_from([[flag], ["--no-" + flag[2:]]])
    if action.nargs == 0:  # store_true and friends
        return st.just([flag])
    if action.choices:
        values = st.one_of(st.sampled_from(list(action.choices)), st.sampled_from(["bogus", ""]))
    elif action.type is int:
        values = INTS
    elif action.type is float:
        values = FLOATS
    else:
        values = TEXT
    return values.map(lambda v: [flag, v])


@st.composite
def command_lines(draw) -> tuple[str, list[str], bool]:
    command = draw(st.sampled_from(COMMANDS))
    chosen = draw(st.lists(st.sampled_from(options(command)), max_size=4))
    args = [token for action in chosen for token in draw(value_for(action))]
    # Leave out the safe base now and then, except for train (whose defaults are a 90-epoch run).
    keep_base = command == "train" or draw(st.booleans())
    return command, args, keep_base


def fuzz_arguments(world, case) -> None:
    root, ckpt = world
    command, args, keep_base = case
    argv = [command, *(base_args(command, root, ckpt) if keep_base else []), *args]
    if command == "train" and "--max-steps" in args:  # the fuzzer may lift the step limit: keep runs short
        argv += ["--max-steps", "2"]
    code, err = run(argv)
    check(argv, code, err)


@settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(case=command_lines())
def test_fuzz_command_line(world, case):
    fuzz_arguments(world, case)


@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=command_lines())
def test_fuzz_command_line_long(world, case):
    fuzz_arguments(world, case)


def image_bytes(fmt: str, mode: str, size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 77).save(buf, format=fmt)
    return buf.getvalue()


VALID = [image_bytes("PNG", "RGB", (40, 31)), image_bytes("JPEG", "L", (23, 57)), image_bytes("GIF", "P", (16, 16)),
         image_bytes("BMP", "RGB", (9, 9)), image_bytes("WEBP", "RGB", (20, 20)), image_bytes("TIFF", "RGBA", (12, 8))]  # fmt: skip


@st.composite
def file_contents(draw) -> bytes:
    """Random bytes, or a real image of some format with bytes flipped, cut off or appended."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=512))
    data = bytearray(draw(st.sampled_from(VALID)))
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    for _ in range(draw(st.integers(0, 8))):
        data[rng.randrange(len(data))] = rng.randrange(256)
    cut = draw(st.integers(0, len(data)))
    return bytes(data[:cut]) + draw(st.binary(max_size=16))


@pytest.fixture(scope="module")
def loaded_once(world):
    """predict loads its checkpoint once here, not per example: the images are what is fuzzed."""
    cached = load_for_inference(world[1])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(predict_command, "load_for_inference", lambda path: cached)
        yield world


def fuzz_predict(world, content: bytes) -> None:
    root, ckpt = world
    path = root / "fuzzed-image"
    path.write_bytes(content)
    argv = ["predict", "--checkpoint", str(ckpt), str(path), "--json"]
    code, err = run(argv)
    check(argv, code, err)
    assert code in (0, 2), (content[:64], err)
    if code == 0:
        assert err == "", err  # no warnings either: a damaged file that decodes is just a prediction
    if code == 2:
        assert f"{path}:" in err, err


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(content=file_contents())
def test_fuzz_predict_bytes(loaded_once, content):
    fuzz_predict(loaded_once, content)


@pytest.mark.slow
@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=file_contents())
def test_fuzz_predict_bytes_long(loaded_once, content):
    fuzz_predict(loaded_once, content)
