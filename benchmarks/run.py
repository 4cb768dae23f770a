"""Run attnx's side-by-side benchmarks and save the table.

    python benchmarks/run.py [--quick] [--threads N] [--out benchmarks/RESULTS.md]

The measurements are those of `python -m attnx bench` (attnx/bench.py): each
row times attnx and its competitors interleaved in one process and prints
the ratio competitor / attnx. Run it on a quiet machine; tests never assert a
time.
"""
import argparse
import contextlib
import datetime
import io
import os
import sys

from attnx import bench


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "RESULTS.md"))
    args = p.parse_args()
    log = io.StringIO()

    class Tee(io.TextIOBase):
        def write(self, s):
            sys.__stdout__.write(s)
            log.write(s)
            return len(s)

    with contextlib.redirect_stdout(Tee()):
        table = bench.run(quick=args.quick, threads=args.threads)
    header = [line for line in log.getvalue().splitlines()[:5] if line.strip()]
    with open(args.out, "w") as f:
        f.write(f"# attnx benchmark ({datetime.date.today()}{', quick' if args.quick else ''})\n\n")
        f.write("\n".join(f"- {h}" for h in header) + "\n\n")
        f.write(table.markdown() + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
