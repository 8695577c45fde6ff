"""``alexnet export``: TorchScript or ONNX, checked against the PyTorch model's logits."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from ..engine.checkpoint import build_model, read_checkpoint
from ..errors import AlexNetError

TOLERANCE = 1e-4  # max abs difference of logits allowed between PyTorch and the export


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a checkpoint to TorchScript or ONNX")
    p.add_argument("--checkpoint", required=True, metavar="C")
    p.add_argument("--format", required=True, choices=("torchscript", "onnx"))
    p.add_argument("--out", required=True, metavar="FILE")
    p.set_defaults(run=run)


def example_input(ckpt: dict) -> torch.Tensor:
    spec = ckpt["preprocess"]
    size, channels = int(spec["image_size"]), int(ckpt["model_args"]["in_channels"])
    return torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(0))


def export_torchscript(model: torch.nn.Module, x: torch.Tensor, out: Path) -> torch.Tensor:
    with warnings.catch_warnings():
        # TorchScript is deprecated upstream but still what C++ and mobile runtimes load.
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, x)
        try:
            traced.save(str(out))
        except RuntimeError as e:  # TorchScript's writer reports I/O failures as RuntimeError
            raise OSError(str(e).splitlines()[0]) from None
        loaded = torch.jit.load(str(out))
    with torch.no_grad():
        return loaded(x)


def export_onnx(model: torch.nn.Module, x: torch.Tensor, out: Path) -> torch.Tensor:
    try:
        import onnxruntime as ort
    except ImportError:
        raise AlexNetError("ONNX export needs the onnx extra: pip install 'alexnet[onnx]'") from None
    # torch.export-based exporter: the legacy one cannot express adaptive pooling to 6x6 from
    # a map that is not a multiple of 6 (any input below 227 px).
    torch.onnx.export(
        model, (x,), str(out), input_names=["images"], output_names=["logits"],
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, dynamo=True, verbose=False,
    )  # fmt: skip
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"images": x.numpy()})[0])


def run(args) -> int:
    out = Path(args.out)
    if not args.out or out.is_dir() or (out.exists() and not out.is_file()):
        raise AlexNetError(f"--out must name a file to write, got {args.out!r}")
    ckpt = read_checkpoint(args.checkpoint)
    model = build_model(ckpt, args.checkpoint).eval()
    x = example_input(ckpt)
    # Written beside the target and renamed over it once checked, so a failed export never
    # leaves a broken file where a good one was.
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp{out.suffix}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        exported = (export_torchscript if args.format == "torchscript" else export_onnx)(model, x, tmp)
        with torch.no_grad():
            reference = model(x)
        diff = (exported - reference).abs().max().item()
        if diff > TOLERANCE:
            raise AlexNetError(f"the {args.format} export differs from the PyTorch model by {diff:.2e} (limit {TOLERANCE:g})")
        os.replace(tmp, out)
    except OSError as e:
        raise AlexNetError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)
    print(f"wrote {out} ({args.format}); max |logit difference| against PyTorch on a test batch: {diff:.2e}")
    return 0
