"""python -m bench [--quick] [--write-docs | --doc PATH | --no-doc] [--only kernel server ...]: every benchmark.

Reports go to bench-results/ (one file per benchmark and run); docs/benchmarks.md changes only with
--write-docs (or --doc PATH for another file).

Each runs in its own process (`python -m bench.NAME`), so thread settings and loaded libraries of one never
touch the next; one that fails is reported and the others still run (the exit status says so).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time

from . import common

BENCHMARKS = ("kernel", "server", "startup", "memory")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="run every lstm-stream benchmark (reports: bench-results/; "
                                 "docs/benchmarks.md only with --write-docs)")
    ap.add_argument("--quick", action="store_true", help="short smoke runs (~1.5 minutes in all)")
    common.add_doc_options(ap)
    ap.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS))
    a = ap.parse_args(argv)
    extra = (["--quick"] if a.quick else []) + (["--write-docs"] if a.write_docs else []) + \
        (["--doc", str(a.doc)] if a.doc else []) + ["--results", str(a.results)] + \
        (["--no-doc"] if a.no_doc else [])
    common.exit_on_sigterm()
    failed = []
    for name in a.only:
        print(f"==== bench.{name} ====", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", f"bench.{name}", *extra], env=common.clean_env(),
                                cwd=common.ROOT)
        try:
            rc = proc.wait()
        finally:
            common.stop_process(proc)  # on SIGTERM or Ctrl-C here: the child stops its servers and exits
        print(f"==== bench.{name}: {'ok' if rc == 0 else f'FAILED ({rc})'} in {time.perf_counter() - t0:.0f} s",
              flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
