"""Command line: ``python -m attnx demo | info | bench`` (or the ``attnx``
console script, the same program)."""
import argparse
import os
import platform
import sys


def _info(args):
    import numpy as np

    import attnx

    print(f"attnx {attnx.__version__}")
    print(f"  kernels:    {attnx.simd_level()} (available: {', '.join(attnx.simd_available())};"
          f" force lower with ATTNX_SIMD=scalar|avx2|avx512)")
    print(f"  build:      {attnx.build_info()}")
    nt = attnx.max_threads()
    print(f"  threads:    {nt}")
    print(f"  python:     {platform.python_implementation()} {platform.python_version()}"
          f" on {platform.machine()} ({platform.system()})")
    print(f"  numpy:      {np.__version__}")
    print(f"  include:    {attnx.get_include()}")
    return 0


def _demo(args):
    if args.plot is not None:
        # check before the demo runs, not after it: one line, exit 2
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("attnx demo --plot needs matplotlib: pip install \"attnx[plot]\" "
                  "(or pip install matplotlib)", file=sys.stderr)
            return 2
    from . import demo
    if args.train:
        demo.train(steps=args.steps)
        return 0
    demo.run(plot_dir=args.plot)
    return 0


def _bench(args):
    from . import bench
    return bench.main(args)


def _parser(prog):
    from ._version import __version__
    p = argparse.ArgumentParser(
        prog=prog,
        description="attnx: fast, numerically stable dot-product attention in float64 and "
                    "float32 (float32 and float16 inputs compute in float32, everything else "
                    "in float64).")
    p.add_argument("--version", action="version", version=f"attnx {__version__}")
    sub = p.add_subparsers(dest="cmd", metavar="{demo,info,bench}")
    d = sub.add_parser("demo", help="walk through the worked example step by step")
    d.add_argument("--plot", metavar="DIR", help="also write the tutorial's heatmaps as PNGs "
                   "into DIR (needs matplotlib: pip install \"attnx[plot]\")")
    d.add_argument("--train", action="store_true", help="instead: learn the reversal "
                   "alignment with one attention layer, by NumPy SGD on attnx's gradients "
                   "(examples/train_alignment.py)")
    d.add_argument("--steps", type=int, default=300, help="SGD steps for --train (default 300)")
    d.set_defaults(func=_demo)
    i = sub.add_parser("info", help="version, SIMD level, compiler and flags")
    i.set_defaults(func=_info)
    b = sub.add_parser("bench", help="benchmark attnx against NumPy, SciPy and PyTorch")
    b.add_argument("--quick", action="store_true", help="fewer, smaller runs (under a minute)")
    b.add_argument("--threads", type=int, default=None, help="thread count for the threaded rows")
    b.add_argument("--markdown", action="store_true",
                   help="print the table as Markdown instead of aligned text")
    b.add_argument("--sweep", action="store_true",
                   help="instead: d in {32,64,80,128} x L in {64,512,4096} x dtype x causal, "
                        "against torch sdpa")
    b.add_argument("--only", metavar="ROWS", default=None,
                   help="comma-separated rows to run, of: " + ", ".join(_bench_rows()))
    b.set_defaults(func=_bench)
    return p


def _bench_rows():
    from .bench import ROWS
    return ROWS


def main(argv=None, prog=None):
    if prog is None:
        # `attnx ...` (the console script) or `python -m attnx ...`
        name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
        prog = "attnx" if name == "attnx" else "python -m attnx"
    p = _parser(prog)
    args = p.parse_args(argv)
    if args.cmd is None:            # no command: the help, not an error
        p.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
