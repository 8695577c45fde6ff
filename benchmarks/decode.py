"""JPEG decoding speed per core: PIL, torchvision.io.decode_jpeg, torchcodec, and nvJPEG where CUDA is present.

    .venv/bin/python benchmarks/decode.py --tree /tmp/jpeg-tree --files 400 --json benchmarks/results/decode-<cpu>.json

What an ImageNet-style loader pays per image, to choose its decoder. ``--files`` JPEGs of a
tree written by ``benchmarks/jpeg_tree.py`` (spread over its classes, the CMYK and truncated
files left out) are read into memory once, so every decoder works from the same bytes in
the page cache. Each case, in one process with one thread (so figures are per core), gives
images/s for
  (a) decode to a uint8 RGB tensor (C, H, W);
  (b) decode and resize the shorter side to 256, antialiased bilinear: PIL as its users do
      it (``draft`` then ``resize(BILINEAR)``), the tensor decoders with
      ``torchvision.transforms.v2.functional.resize(antialias=True)``;
  (c) for reference, decode a 256x256 quality-90 re-encode of each image (what a store of
      re-encoded JPEGs costs), and copy a raw 256x256x3 uint8 array out of a numpy memmap
      (what a raw store costs).
Every case runs ``--rounds`` rounds of at least ``--seconds``, the cases alternating within
each round; the median round is reported. On CUDA, torchvision's and torchcodec's
``decode_jpeg(list, device="cuda")`` (nvJPEG) decode ``--gpu-batch`` images per call.

Before timing, every decoder decodes an RGB file, a greyscale re-encode, the tree's CMYK
file and its truncated file, and is compared with PIL's ``convert("RGB")``. A decoder that
cannot be imported or cannot decode is reported as unavailable, with its error.

Needs the cores to itself: every figure is a rate over seconds of work.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import statistics
import tempfile
import time
import warnings
from io import BytesIO
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, features

SIZE = 256
TASKS = ("decode", f"decode+resize {SIZE}", f"decode {SIZE}x{SIZE} q90")


def cpu_info() -> dict:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "")
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    return {"model": model, "avx512f": "avx512f" in flags, "cores": os.cpu_count()}


def versions() -> dict:
    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    out = {name: version(name) for name in ("torch", "torchvision", "pillow", "torchcodec", "numpy")}
    out["pillow libjpeg-turbo"] = features.version("libjpeg_turbo")
    return out


def short_side(w: int, h: int, size: int) -> tuple[int, int]:
    """(w, h) with the shorter side ``size``, as torchvision's resize([size]) rounds it."""
    return (size, int(size * h / w)) if w <= h else (int(size * w / h), size)


def survey(tree: Path, n: int) -> tuple[list[Path], dict[str, Path]]:
    """``n`` RGB files spread evenly over the tree, and the first CMYK and truncated files in it."""
    good, special = [], {}
    for path in sorted(tree.rglob("*.JPEG")):
        with open(path, "rb") as f:
            f.seek(-2, os.SEEK_END)
            complete = f.read() == b"\xff\xd9"  # the end-of-image marker
        mode = Image.open(path).mode
        if not complete:
            special.setdefault("truncated", path)
        elif mode == "CMYK":
            special.setdefault("cmyk", path)
        elif mode == "RGB":
            good.append(path)
    if len(good) < n:
        raise SystemExit(f"{tree} has {len(good)} complete RGB JPEGs, fewer than --files {n}")
    return [good[i * len(good) // n] for i in range(n)], special


def reencode(data: bytes, *, square: int | None = None, mode: str = "RGB") -> bytes:
    """``data`` as a quality-90 JPEG: in ``mode``, or resized and centre-cropped to ``square`` px."""
    img = Image.open(BytesIO(data)).convert(mode)
    if square:
        w, h = short_side(*img.size, square)
        left, top = (w - square) // 2, (h - square) // 2
        img = img.resize((w, h), Image.BILINEAR).crop((left, top, left + square, top + square))
    buf = BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


# Each decoder: (decode, decode_and_resize), both taking a list of encoded images (bytes for
# PIL, 1-D uint8 tensors for the others) and returning uint8 RGB tensors (C, H, W).


def pil_decoder():
    def to_tensor(img: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.array(img)).permute(2, 0, 1)

    def decode(batch: list[bytes]) -> list[torch.Tensor]:
        return [to_tensor(Image.open(BytesIO(b)).convert("RGB")) for b in batch]

    def decode_resize(batch: list[bytes]) -> list[torch.Tensor]:
        out = []
        for b in batch:
            img = Image.open(BytesIO(b))
            size = short_side(*img.size, SIZE)
            img.draft("RGB", size)  # libjpeg's DCT scaling to 1/2, 1/4, 1/8 where that stays >= size
            out.append(to_tensor(img.convert("RGB").resize(size, Image.BILINEAR)))
        return out

    return decode, decode_resize


def tensor_decoder(decode_jpeg: Callable, device: str):
    from torchvision.transforms.v2.functional import resize

    def decode(batch: list[torch.Tensor]) -> list[torch.Tensor]:
        if device == "cpu":
            return [decode_jpeg(t, device) for t in batch]
        return decode_jpeg(batch, device)  # one nvJPEG call for the batch

    def decode_resize(batch: list[torch.Tensor]) -> list[torch.Tensor]:
        return [resize(img, [SIZE], antialias=True) for img in decode(batch)]

    return decode, decode_resize


def torchvision_jpeg() -> Callable:
    from torchvision.io import ImageReadMode, decode_jpeg

    return lambda source, device: decode_jpeg(source, mode=ImageReadMode.RGB, device=device)


def torchcodec_jpeg() -> Callable:
    from torchcodec.decoders import decode_jpeg

    return lambda source, device: decode_jpeg(source, mode="RGB", device=device)


def decoders(cuda: bool) -> tuple[dict[str, tuple], dict[str, str]]:
    """The decoders this machine has, and why the others are unavailable."""
    found, unavailable = {"pil": pil_decoder()}, {}
    for name, load in (("torchvision", torchvision_jpeg), ("torchcodec", torchcodec_jpeg)):
        try:
            decode_jpeg = load()
        except Exception as e:  # not installed, or its native library failing to load
            unavailable[name] = f"{type(e).__name__}: {e}"
            continue
        found[name] = tensor_decoder(decode_jpeg, "cpu")
        if cuda:
            found[f"{name}-cuda"] = tensor_decoder(decode_jpeg, "cuda")
    return found, unavailable


def deprecation_message(jpeg: bytes) -> str | None:
    """What torchvision.io.decode_jpeg warns (a DeprecationWarning: hidden by Python's default filters)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            from torchvision.io import decode_jpeg

            decode_jpeg(torch.frombuffer(bytearray(jpeg), dtype=torch.uint8))
        except Exception:
            pass
    return next((str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)), None)


def check(decode: Callable, samples: dict[str, bytes], convert: Callable) -> dict[str, str]:
    """Each sample decoded by ``decode``, against PIL's convert("RGB")."""
    out = {}
    for kind, data in samples.items():
        try:
            img = decode(convert([data]))[0].cpu()
        except Exception as e:
            message = re.sub(r"^\w+, \S+:\d+, ", "", str(e).splitlines()[0])  # less the C++ source location
            out[kind] = f"error: {type(e).__name__}: {message}"
            continue
        ref = torch.from_numpy(np.array(Image.open(BytesIO(data)).convert("RGB"))).permute(2, 0, 1)
        if img.dtype != torch.uint8 or img.shape != ref.shape:
            out[kind] = f"wrong: {tuple(img.shape)} {img.dtype}, PIL gives {tuple(ref.shape)}"
        else:
            diff = (img.int() - ref.int()).abs()
            out[kind] = f"RGB {tuple(img.shape)}, |diff| vs PIL mean {diff.float().mean():.2f} max {diff.max()}"
    return out


def time_round(fn: Callable, inputs: list, batch: int, sync: Callable, seconds: float) -> tuple[int, float]:
    """(images, seconds) of calling ``fn`` on ``batch`` inputs at a time, cycling, for >= ``seconds``."""
    images, i, start = 0, 0, time.perf_counter()
    while True:
        chunk = inputs[i : i + batch]
        fn(chunk)
        sync()
        images, i = images + len(chunk), (i + batch) % len(inputs)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return images, elapsed


def measure(cases: dict[str, tuple], rounds: int, seconds: float) -> dict[str, list[tuple[int, float]]]:
    """A warm-up call of every case, then ``rounds`` rounds, the cases' order reversed every other round."""
    for case in cases.values():
        time_round(*case, 0.0)
    out = {name: [] for name in cases}
    for r in range(rounds):
        for name in list(cases)[:: 1 if r % 2 == 0 else -1]:
            out[name].append(time_round(*cases[name], seconds))
    return out


def raw_store(images: list[bytes], path: str) -> np.memmap:
    """The decoded ``images`` (all the same size) in a uint8 memmap at ``path``, read once into the page cache."""
    first = np.array(Image.open(BytesIO(images[0])).convert("RGB"))
    store = np.memmap(path, np.uint8, "w+", shape=(len(images), *first.shape))
    for i, b in enumerate(images):
        store[i] = np.array(Image.open(BytesIO(b)).convert("RGB"))
    store.flush()
    store = np.memmap(path, np.uint8, "r", shape=store.shape)
    store.sum()
    return store


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tree", required=True, help="a tree written by benchmarks/jpeg_tree.py")
    p.add_argument("--files", type=int, default=400)
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds; the median is reported")
    p.add_argument("--seconds", type=float, default=1.0, help="per case and round")
    p.add_argument("--gpu-batch", type=int, default=128, help="images per nvJPEG call")
    p.add_argument("--no-cuda", action="store_true", help="leave out the GPU decoders")
    p.add_argument("--json", default=None, help="also write the figures and raw rounds here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cuda = torch.cuda.is_available() and not args.no_cuda

    # The same bytes for every decoder, and the two reference stores.
    paths, special = survey(Path(args.tree), args.files)
    data = [p.read_bytes() for p in paths]
    small = [reencode(b, square=SIZE) for b in data]
    inputs = dict(zip(TASKS, (data, data, small)))
    tmp = tempfile.NamedTemporaryFile(suffix=".u8")
    raw = raw_store(small, tmp.name)

    deprecation = deprecation_message(data[0])
    warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision")
    found, unavailable = decoders(cuda)
    samples = {"rgb": data[0], "greyscale": reencode(data[0], mode="L")}
    samples |= {kind: path.read_bytes() for kind, path in sorted(special.items())}

    def as_tensors(batch: list[bytes]) -> list[torch.Tensor]:
        return [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in batch]

    # Check each decoder, then time it: case = (function, inputs, batch size, sync).
    correctness, cases = {}, {}
    for name, (decode, decode_resize) in found.items():
        convert = (lambda bs: bs) if name == "pil" else as_tensors
        correctness[name] = check(decode, samples, convert)
        if correctness[name]["rgb"].startswith(("error", "wrong")):
            unavailable[name] = correctness[name]["rgb"]
            continue
        gpu = name.endswith("cuda")
        for task, fn in zip(TASKS, (decode, decode_resize, decode)):
            cases[f"{name}/{task}"] = (fn, convert(inputs[task]), args.gpu_batch if gpu else 1,
                                       torch.cuda.synchronize if gpu else lambda: None)  # fmt: skip
    memmap = f"memmap/copy {SIZE}x{SIZE}x3"
    copy = lambda idx: [torch.from_numpy(np.array(raw[i])).permute(2, 0, 1) for i in idx]  # noqa: E731
    cases[memmap] = (copy, list(range(len(raw))), 1, lambda: None)
    rounds = measure(cases, args.rounds, args.seconds)
    median = {name: statistics.median(n / s for n, s in rs) for name, rs in rounds.items()}

    info = {"cpu": cpu_info(), "versions": versions(), "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if cuda else None}  # fmt: skip
    print(f"{info['cpu']['model']} (avx512f: {info['cpu']['avx512f']}), {info['threads']} thread"
          + (f", {info['cuda']}" if cuda else "") + "; "
          + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))  # fmt: skip
    print(f"{len(data)} files from {args.tree}: mean {statistics.fmean(map(len, data)) / 1000:.1f} KB; "
          f"{SIZE}x{SIZE} q90 re-encodes mean {statistics.fmean(map(len, small)) / 1000:.1f} KB; "
          f"raw {SIZE}x{SIZE}x3 {raw[0].nbytes / 1000:.1f} KB")  # fmt: skip
    print(f"\nimages/s, median of {args.rounds} rounds of >= {args.seconds:g} s"
          + (f" (cuda: batches of {args.gpu_batch})" if cuda else ""))  # fmt: skip
    print(f"{'':<18}" + "".join(f"{t:>22}" for t in TASKS))
    for name in found:
        if name not in unavailable:
            print(f"{name:<18}" + "".join(f"{median[f'{name}/{t}']:>22,.0f}" for t in TASKS))
    print(f"{memmap:<62}{median[memmap]:>22,.0f}")
    for name, why in unavailable.items():
        print(f"{name}: unavailable: {why}")
    print("\ndecoded as:")
    for name, result in correctness.items():
        for kind, text in result.items():
            print(f"  {name:<18}{kind:<11}{text}")
    print(f"\ntorchvision.io.decode_jpeg warns: {deprecation}")

    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            **info, "tree": args.tree, "files": [str(p) for p in paths],
            "mean_bytes": statistics.fmean(map(len, data)), "mean_bytes_256": statistics.fmean(map(len, small)),
            "rounds": args.rounds, "seconds": args.seconds, "gpu_batch": args.gpu_batch,
            "images_per_s": median,
            "raw_rounds": {k: [{"images": n, "seconds": s} for n, s in v] for k, v in rounds.items()},
            "unavailable": unavailable, "correctness": correctness, "torchvision_deprecation": deprecation,
        }, indent=1) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
