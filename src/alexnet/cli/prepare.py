"""``alexnet prepare``: an ImageNet-style tree decoded once into a pre-resized, sharded store."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("prepare", help="decode an image folder tree once into a pre-resized store that train/eval read",
                       description="decode an ImageNet-style tree (train/<class>/*.jpg, val/ as class folders or the "
                                   "flat ILSVRC layout with its labels file) once into a sharded, memory-mapped store "
                                   "of images resized to --size; train and eval read it with --dataset imagefolder "
                                   "--data-dir STORE. Interrupted, it resumes; run again on an unchanged tree, it "
                                   "does nothing.")  # fmt: skip
    p.add_argument("src", metavar="SRC_TREE", help="the tree: SRC_TREE/train/<class>/*.jpg and SRC_TREE/val/...")
    p.add_argument("--out", required=True, metavar="STORE", help="the store's directory (created, or brought up to date)")
    p.add_argument("--size", type=int, default=256, help="shorter side, then the central square (default 256, the paper's)")
    p.add_argument("--shard-images", type=int, default=1024, metavar="N", help="images per shard file (default 1024)")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: one per core)")
    p.add_argument("--min-side", type=int, default=16, metavar="PX", help="skip images smaller than this on a side")
    p.add_argument("--train-dir", metavar="DIR", help="class folders for training (default SRC_TREE/train)")
    p.add_argument("--val-dir", metavar="DIR", help="validation: class folders or flat (default SRC_TREE/val)")
    p.add_argument("--val-labels", metavar="FILE", help="labels file for a flat validation folder")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..data.image_store import prepare_store
    from ..errors import AlexNetError

    if args.workers is not None and args.workers < 1:
        raise AlexNetError(f"--workers must be at least 1, got {args.workers}")
    try:
        report = prepare_store(args.src, args.out, size=args.size, shard_images=args.shard_images,
                               workers=args.workers, min_side=args.min_side, train_dir=args.train_dir,
                               val_dir=args.val_dir, val_labels=args.val_labels, progress=args.progress)  # fmt: skip
    except KeyboardInterrupt:
        error = AlexNetError("interrupted; the shards finished so far are kept: run the same command again to resume")
        error.exit_code = 130
        raise error from None
    counts = " + ".join(f"{n} {split}" for split, n in report.images.items())
    if report.up_to_date:
        print(f"store {args.out} is up to date with {args.src} ({counts} images at {args.size} px): nothing to do")
    else:
        print(f"store {args.out}: {counts} images at {args.size} px; {report.written} shard(s) written, "
              f"{report.reused} kept from an earlier run")  # fmt: skip
    if report.val_missing:
        more = len(report.val_missing) - 10
        missing = ", ".join(report.val_missing[:10]) + (f" and {more} more" if more > 0 else "")
        print(f"note: {len(report.val_missing)} of the train classes have no validation image in the store, so "
              f"validation cannot measure them: {missing} (val_missing_classes in "
              f"{args.out}/manifest.json)", file=sys.stderr)  # fmt: skip
    if report.skipped:
        print(f"skipped {len(report.skipped)} unreadable file(s), listed in {args.out}/manifest.json:", file=sys.stderr)
        for s in report.skipped[:20]:
            print(f"  {s['path']}: {s['reason']}", file=sys.stderr)
        if len(report.skipped) > 20:
            print(f"  and {len(report.skipped) - 20} more", file=sys.stderr)
    return 0
