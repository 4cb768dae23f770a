"""Command line: ``python -m attnx demo | info | bench``."""
import argparse
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
    from . import demo
    demo.run(plot_dir=args.plot)
    return 0


def _bench(args):
    from . import bench
    return bench.main(args)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m attnx",
                                description="attnx: dot-product attention on float64")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="walk through the worked example step by step")
    d.add_argument("--plot", metavar="DIR", help="also write the tutorial's heatmaps as PNGs "
                   "into DIR (needs matplotlib: pip install \"attnx[plot]\")")
    d.set_defaults(func=_demo)
    i = sub.add_parser("info", help="version, SIMD level, compiler and flags")
    i.set_defaults(func=_info)
    b = sub.add_parser("bench", help="benchmark attnx against NumPy, SciPy and PyTorch")
    b.add_argument("--quick", action="store_true", help="fewer, smaller runs (under a minute)")
    b.add_argument("--threads", type=int, default=None, help="thread count for the threaded rows")
    b.set_defaults(func=_bench)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
