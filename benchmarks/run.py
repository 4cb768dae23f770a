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


TITLE = ("# attnx benchmarks, one table per CPU\n\n"
         "Written by `python benchmarks/run.py`, which replaces the section of the CPU it "
         "runs on and keeps the others. Times depend on the CPU: compare rows within a table.\n")


def write_section(path, section):
    """Replace the section (a `## ` heading and what follows) with the same
    heading as `section` in the file at `path`, or append it."""
    sections = []
    if os.path.exists(path):
        for line in open(path).read().splitlines(keepends=True):
            if line.startswith("## "):
                sections.append(line)
            elif sections:
                sections[-1] += line
    head = section.splitlines()[0]
    sections = [s for s in sections if s.splitlines()[0] != head] + [section]
    with open(path, "w") as f:
        f.write(TITLE + "\n" + "\n".join(s.rstrip("\n") + "\n" for s in sections))


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
    lines = log.getvalue().splitlines()
    header = lines[:lines.index("")] if "" in lines else lines[:6]
    section = (f"## {bench.machine()}\n\n"
               f"Measured {datetime.date.today()}{' (--quick)' if args.quick else ''}.\n\n"
               + "\n".join(f"- {h}" for h in header) + "\n\n" + table.markdown() + "\n")
    write_section(args.out, section)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
