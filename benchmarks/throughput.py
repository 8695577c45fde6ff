"""Training and inference throughput of the usual AlexNet pipeline against ours (same as `alexnet bench`).

    flock /tmp/alexnet-bench.lock .venv/bin/python benchmarks/throughput.py \
        --model alexnet_paper --image-size 227 --batch-size 128 --json benchmarks/results/throughput-227.json

See alexnet/bench.py for what each side does; benchmarks/RESULTS.md for the figures.
"""

import sys

from alexnet.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
