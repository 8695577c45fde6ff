"""``make gpu-check``: every device path of the package, run for real on this machine's GPU, then
one table of training throughput.

    make gpu-check                          # with the project's .venv
    make gpu-check GPU_PYTHON=python3       # with a Python whose torch already has CUDA
    python benchmarks/gpu_check.py --out DIR [--skip-bench]

1. tests/test_devices.py: the device-parametrized tests, now on CUDA as well as the CPU (and
   the op-by-op audit on the real GPU);
2. ``alexnet train`` of each model for a few steps at its native size on CUDA, with and without
   ``--amp``, then ``alexnet eval --tta 10crop`` of each checkpoint;
3. ``alexnet export --format onnx`` of a CUDA-trained paper model, checked by onnxruntime;
4. checkpoints across devices: trained on CUDA and resumed on the CPU, and the reverse;
5. a diverging run on CUDA (the loss read back every 20 steps) stops naming its step;
6. ``torchrun`` with nccl: 2 processes where 2 GPUs exist (1 otherwise, and then 2 processes
   on 1 GPU must be refused in one line);
7. ``alexnet bench --device cuda --only ours --data synthetic``: the three models at their
   native size, 3 channels, 1000 classes, batch 256, bfloat16 and channels_last, eager and
   ``--compile``: one table of training and inference images/s and peak memory;
8. ``alexnet prepare`` of a small JPEG tree, training from the store on the device with the
   paper's crop and the random-resized one, 10-crop evaluation, and ``alexnet bench --loader``
   reading the folder and the store (the loader beside the step, and the bottleneck).

Prints PASS or FAIL per check and the table; exits 0 when everything passed, 1 when something
failed, and 2 (one line) where no GPU is present. ``--device cpu`` runs the same script on the
CPU, small, to check the script itself: not a GPU check, and it says so.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NATIVE = {"alexnet_paper": 227, "alexnet_paper_grouped": 227, "alexnet_owt": 224}


class Checks:
    def __init__(self, log):
        self.results: list[tuple[str, bool, float, str]] = []
        self.log = log

    @contextlib.contextmanager
    def check(self, name: str):
        """A named check: PASS unless the block raises (an AssertionError's text is the reason)."""
        t0 = time.perf_counter()
        detail = ""
        try:
            yield
            ok = True
        except Exception as e:  # a failed check is reported, and the others still run
            ok, detail = False, f"{type(e).__name__}: {e}"
            self.log(traceback.format_exc())
        took = time.perf_counter() - t0
        self.results.append((name, ok, took, detail))
        print(f"{'PASS' if ok else 'FAIL'}  {name}  ({took:.0f} s){'  ' + detail[:400] if detail else ''}", flush=True)


def alexnet(*args: str) -> tuple[int, str, str]:
    """``alexnet ARGS`` in this process: (exit code, stdout, stderr)."""
    from alexnet.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def expect(code: int, out: str, err: str, want: int = 0) -> str:
    assert code == want, f"exit {code}, expected {want}: {(err or out).strip().splitlines()[-1:] or ''}"
    return out


def device_tests(ctx) -> None:
    with ctx.checks.check("device-parametrized tests (tests/test_devices.py)"):
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_devices.py")],
                              capture_output=True, text=True, cwd=ROOT, env=ctx.children_env, timeout=600)  # fmt: skip
        ctx.log(done.stdout + done.stderr)
        summary = (done.stdout.strip().splitlines() or [""])[-1]
        assert done.returncode == 0, summary
        assert ctx.dry or "skipped" not in summary, summary  # with a GPU every device parameter has a device
        print(f"      {summary}")


def command_line_runs(ctx) -> None:
    import torch

    checks, dev, runs, size, batch, train_args = ctx.checks, ctx.dev, ctx.out / "runs", ctx.size, ctx.batch, ctx.train_args
    # The torchrun launches (process start-up, imports, CUDA and nccl set-up: most of their time
    # is the CPU's) go on in the background while the runs in this process use the GPU.
    nproc = 1 if ctx.dry else min(2, ctx.gpus)
    ddp_run = runs / "ddp"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    launches = {
        "ddp": [launcher + [f"--nproc_per_node={nproc}", "-m", "alexnet",
                            *train_args("alexnet_paper", ddp_run, max_steps=4, subset=4 * batch * nproc)],  # 4 steps an epoch
                launcher + [f"--nproc_per_node={nproc}", "-m", "alexnet", "train", "--resume", str(ddp_run), "--epochs", "2",
                            "--max-steps", "6", "--no-progress"]],
    }  # fmt: skip
    if not ctx.dry and ctx.gpus == 1:
        launches["too-many"] = [launcher + ["--nproc_per_node=2", "-m", "alexnet", *train_args("alexnet_owt", runs / "too-many")]]
    done: dict[str, list[subprocess.CompletedProcess]] = {}

    def launch(name: str) -> None:
        done[name] = []
        for cmd in launches[name]:  # one after the other: a resume follows its run
            done[name].append(subprocess.run(cmd, capture_output=True, text=True, env=ctx.children_env, timeout=600))
            if done[name][-1].returncode != 0:
                break

    background = [threading.Thread(target=launch, args=(name,), daemon=True) for name in launches]
    for thread in background:
        thread.start()

    for model in NATIVE:
        for amp in (False, True):
            run = runs / f"{model}{'-amp' if amp else ''}"
            with checks.check(f"train {model} at {size[model]} px on {dev}{' with --amp' if amp else ''}, then eval --tta 10crop"):
                expect(*alexnet(*train_args(model, run, **({"amp": True} if amp else {}))))
                ckpt = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
                assert ckpt["step"] == 3 and ckpt["config"]["device"] == dev, ckpt["step"]
                result = json.loads(expect(*alexnet("eval", "--checkpoint", run / "checkpoints" / "last.pt", "--tta", "10crop",
                                                    "--json", "--device", dev, "--subset", 2 * batch)))  # fmt: skip
                assert result["n"] == 2 * batch and 0 <= result["top1"] <= 1, result

    with checks.check("export alexnet_paper (trained on the device) to ONNX, checked by onnxruntime"):
        expect(*alexnet("export", "--checkpoint", runs / "alexnet_paper" / "checkpoints" / "last.pt", "--format", "onnx",
                        "--out", ctx.out / "paper.onnx"))  # fmt: skip

    with checks.check(f"a checkpoint trained on {dev} resumes on the CPU, and one trained on the CPU resumes on {dev}"):
        there = runs / "alexnet_owt"
        expect(*alexnet("train", "--resume", there, "--device", "cpu", "--max-steps", "4", "--no-progress"))
        assert torch.load(there / "checkpoints" / "last.pt", weights_only=True)["step"] == 4
        here = runs / "owt-cpu"
        expect(*alexnet(*train_args("alexnet_owt", here, device="cpu")))
        expect(*alexnet("train", "--resume", here, "--device", dev, "--max-steps", "4", "--no-progress"))
        assert torch.load(here / "checkpoints" / "last.pt", weights_only=True)["step"] == 4

    with checks.check(f"a diverging run on {dev} stops at its first non-finite loss, naming the step"):
        # One epoch of 40 steps: the loss is read back at step 20, after it went bad.
        code, _, err = alexnet(*train_args("alexnet_owt", runs / "diverge", subset=40 * batch, max_steps=40,
                                           optimizer="sgd", momentum=0, lr=1e6))  # fmt: skip
        line = err.strip().splitlines()[-1]
        named = re.search(r"loss became \S+ at step (\d+)", line)
        # Found at the read of step 20 (or the first after it), it names the step that went bad.
        assert code == 2 and named and int(named.group(1)) <= 20, line
        print(f"      {line[:160]}")

    for thread in background:
        thread.join()
    with checks.check(f"torchrun, {nproc} process{'es' if nproc > 1 else ''}, {'gloo' if ctx.dry else 'nccl'}: train, evaluate, resume (run alongside the above)"):
        first, *rest = done["ddp"]
        for result in done["ddp"]:
            ctx.log(result.stdout + result.stderr)
        assert first.returncode == 0, first.stderr.strip().splitlines()[-3:]
        assert first.stdout.count("test accuracy:") == 1, first.stdout[-500:]
        assert rest and rest[0].returncode == 0, rest[0].stderr.strip().splitlines()[-3:] if rest else "no resume"
        ckpt = torch.load(ddp_run / "checkpoints" / "last.pt", weights_only=True)
        found = (ckpt["step"], ckpt["config"]["device"], len(ckpt["rng_per_rank"]))
        assert found == (6, dev, nproc), found

    if "too-many" in done:
        with checks.check("torchrun with 2 processes on 1 GPU is refused in one line (run alongside the above)"):
            (result,) = done["too-many"]
            ctx.log(result.stdout + result.stderr)
            ours = [ln for ln in result.stderr.splitlines() if "alexnet train: error:" in ln]
            assert result.returncode != 0 and ours and "has 1 GPU" in ours[0], result.stderr[-800:]
            assert "Traceback" not in "\n".join(ln for ln in result.stderr.splitlines() if "alexnet" in ln), result.stderr[-800:]
            print(f"      {ours[0]}")


def throughput_table(ctx) -> list[tuple]:
    import torch

    table = []
    bench_batch = 16 if ctx.dry else 256
    for model in NATIVE:
        for compiled in (False, True):
            if compiled and ctx.dry:
                continue  # compiling on a 2-core CPU takes minutes: the dry run leaves it out
            name = f"bench {model}{' --compile' if compiled else ''}"
            with ctx.checks.check(name):
                json_path = ctx.out / f"bench-{model}{'-compile' if compiled else ''}.json"
                bench = ["bench", "--device", ctx.dev, "--model", model, "--image-size", ctx.size[model], "--batch-size",
                         bench_batch, "--amp", "--only", "ours", "--data", "synthetic", "--in-channels", "3",
                         "--num-classes", "1000", "--steps", 2 if ctx.dry else ctx.bench_steps, "--rounds", 3,
                         "--infer-iters", 2 if ctx.dry else 20, "--infer-batch-sizes", bench_batch, "--json", json_path,
                         *(["--compile"] if compiled else [])]  # fmt: skip
                ctx.log(expect(*alexnet(*bench)))
                r = json.loads(json_path.read_text())
                table.append((model, ctx.size[model], compiled, r["precision"], r["train_images_per_s"]["ours"],
                              r["inference_images_per_s"][str(bench_batch)]["ours"], r["peak_memory_mib"]["ours"]))  # fmt: skip
                if not ctx.dry:
                    torch.cuda.empty_cache()
    print(f"\nTraining throughput on {ctx.env.get('gpu', 'the CPU (dry run)')}: batch {bench_batch}, 3 channels, "
          f"1000 classes, --amp ({'bfloat16' if ctx.dry or ctx.env.get('bf16') else 'float16'}), channels_last, SGD, "
          f"median of 3 rounds of {2 if ctx.dry else ctx.bench_steps} steps")  # fmt: skip
    print(f"{'model':24}{'size':>6}{'compile':>9}{'train img/s':>13}{'infer img/s':>13}{'peak MiB':>10}")
    for model, px, compiled, _, train_rate, infer_rate, mem in table:
        print(f"{model:24}{px:>6}{'yes' if compiled else 'no':>9}{train_rate:13.0f}{infer_rate:13.0f}{mem:10.0f}")
    return table


def write_noise_tree(root: Path, classes: int = 4, per_class: int = 24, val_per_class: int = 4) -> None:
    """A small JPEG tree (smooth random colour fields, ~400x350 px, quality 90) with one truncated
    file: the GPU machine may have no dataset at all."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                small = rng.integers(0, 256, (7, 8, 3), dtype=np.uint8)
                w, h = int(rng.integers(360, 440)), int(rng.integers(315, 385))
                Image.fromarray(small).resize((w, h), Image.BICUBIC).save(folder / f"{k}.JPEG", quality=90)
    cut = root / "train" / "n00000000" / "0.JPEG"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])


def image_store(ctx) -> None:
    """8. ``alexnet prepare``, training and 10-crop evaluation from the store on the device, and
    ``bench --loader`` reading the folder and the store."""
    tree, store, runs = ctx.out / "jpeg-tree", ctx.out / "jpeg-store", ctx.out / "runs"
    size = 63 if ctx.dry else 227
    with ctx.checks.check("alexnet prepare of a JPEG tree (one truncated file skipped and named)"):
        write_noise_tree(tree)
        code, out, err = alexnet("prepare", tree, "--out", store, "--no-progress")
        expect(code, out, err)
        assert "skipped 1 unreadable" in err and "0.JPEG" in err, err
        print(f"      {out.strip()}")
    for crop in ("paper", "random-resized"):
        with ctx.checks.check(f"train alexnet_paper from the store on {ctx.dev} (--train-crop {crop}), eval --tta 10crop"):
            run = runs / f"store-{crop}"
            expect(*alexnet("train", "--no-progress", "--dataset", "imagefolder", "--data-dir", store, "--model",
                            "alexnet_paper", "--image-size", size, "--batch-size", 16, "--epochs", 1, "--max-steps", 3,
                            "--train-crop", crop, "--pca-color", "0.1", "--amp", "--device", ctx.dev, "--out", run))  # fmt: skip
            result = json.loads(expect(*alexnet("eval", "--checkpoint", run / "checkpoints" / "last.pt", "--tta", "10crop",
                                                "--json", "--device", ctx.dev)))  # fmt: skip
            assert result["n"] == 16 and 0 <= result["top1"] <= 1, result
    for source, where in (("folder", tree), ("store", store)):
        with ctx.checks.check(f"bench --loader on {ctx.dev}, reading the {source}"):
            out = expect(*alexnet("bench", "--loader", "--data", "imagefolder", "--data-dir", where, "--device", ctx.dev,
                                  "--image-size", size, "--batch-size", 16 if ctx.dry else 128, "--amp",
                                  "--train-crop", "paper", "--seconds", 2 if ctx.dry else 10))  # fmt: skip
            ctx.log(out)
            for line in out.strip().splitlines()[-3:]:
                print(f"      {line}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (the check); cpu: a small dry run of this script")
    p.add_argument("--out", default=None, help="folder for the log, the runs and results.json (default: a temporary one)")
    p.add_argument("--only", nargs="+", choices=("tests", "runs", "bench", "data"), default=("tests", "runs", "bench", "data"),
                   help="run only these parts: the device tests (1), the command-line runs (2-6), the table (7), "
                        "the image store (8)")
    p.add_argument("--bench-steps", type=int, default=20, help="timed steps per round of each bench")
    args = p.parse_args(argv)

    import torch

    dry = args.device == "cpu"
    if not dry and not torch.cuda.is_available():
        print(f"gpu-check: no GPU here (torch {torch.__version__} sees no CUDA device); nothing was checked", file=sys.stderr)
        return 2
    out = Path(args.out or tempfile.mkdtemp(prefix="gpu-check-"))
    out.mkdir(parents=True, exist_ok=True)
    log_file = (out / "gpu_check.log").open("w")

    def log(text: str) -> None:
        log_file.write(text + "\n")
        log_file.flush()

    dev = args.device
    gpus = torch.cuda.device_count() if not dry else 0
    env = {"torch": torch.__version__, "python": sys.version.split()[0], "device": dev, "gpus": gpus}
    if not dry:
        env.update(gpu=torch.cuda.get_device_name(0), cuda=torch.version.cuda, bf16=torch.cuda.is_bf16_supported())
    print(("DRY RUN on the CPU: not a GPU check. " if dry else "") + json.dumps(env), flush=True)
    started = time.perf_counter()
    checks = Checks(log)
    children_env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

    # Tiny runs: synthetic data upscaled to each model's native size, 3 channels.
    size = {m: (63 if dry else s) for m, s in NATIVE.items()}
    batch = 8 if dry else 32

    def train_args(model: str, run: Path, **changes) -> list[str]:
        """``alexnet train`` arguments: a few steps of ``model``; ``changes`` replace options (True: a bare flag)."""
        options = dict(dataset="synthetic", subset=4 * batch, model=model, image_size=size[model], in_channels=3,
                       batch_size=batch, epochs=1, max_steps=3, device=dev, workers=0, out=run, init="torch",
                       optimizer="adamw", lr=1e-4) | changes  # fmt: skip
        flags = ["train", "--no-progress"]
        for key, value in options.items():
            flag = "--" + key.replace("_", "-")
            flags += [flag] if value is True else [flag, str(value)]
        return flags

    ctx = argparse.Namespace(checks=checks, log=log, dry=dry, dev=dev, gpus=gpus, env=env, out=out, size=size,
                             batch=batch, train_args=train_args, children_env=children_env, bench_steps=args.bench_steps)  # fmt: skip
    table = []
    if "tests" in args.only:
        device_tests(ctx)
    if "runs" in args.only:
        command_line_runs(ctx)
    if "data" in args.only:
        image_store(ctx)
    if "bench" in args.only:
        table = throughput_table(ctx)

    failed = [name for name, ok, _, _ in checks.results if not ok]
    total = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps({
        "environment": env, "seconds": round(total, 1), "dry_run": dry,
        "checks": [{"name": n, "passed": ok, "seconds": round(s, 1), "detail": d} for n, ok, s, d in checks.results],
        "throughput": [dict(zip(("model", "image_size", "compile", "precision", "train_images_per_s",
                                 "inference_images_per_s", "peak_memory_mib"), row)) for row in table],
    }, indent=2) + "\n")  # fmt: skip
    print(f"\n{len(checks.results) - len(failed)} of {len(checks.results)} checks passed in {total:.0f} s"
          + (f"; FAILED: {', '.join(failed)}" if failed else "") + f"; log and results in {out}")  # fmt: skip
    if args.out is None and not failed:
        shutil.rmtree(out / "runs", ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
