"""`python -m service.compile_helper FAMILY`: compile one family's networks into torch's compile
cache and exit. The service starts these helpers itself during its first warm-up
(service/precompile.py), with the batch shape, dtype and thread count its own model thread uses.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from pathlib import Path

from .precompile import PARENT_VARIABLE, PYTHON_WRAPPER_EXIT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.compile_helper",
                                     description="Compile one family's networks into torch's compile cache (the service starts these helpers itself).")
    parser.add_argument("family", type=Path, help="the family's folder")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--fixed-batch", type=int, required=True, help="rows per network call, as the service's FEWSTEP_FIXED_BATCH")
    parser.add_argument("--threads", type=int, required=True, help="torch threads, as the service's model thread uses")
    parser.add_argument("--python-wrapper", action="store_true", help="compile with torch.compile and inductor's Python wrapper, not into a compiled package")
    _exit_with_parent()  # first: a service killed while this helper imports torch is noticed too
    args = parser.parse_args(argv)
    if args.fixed_batch < 1 or args.threads < 1:
        parser.error("--fixed-batch and --threads must be at least 1")
    if not (args.family / "family.json").is_file():
        parser.error(f"{args.family} is not a family's folder (no family.json)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s (helper): %(message)s")
    import torch

    from .runner import Runner

    torch.set_num_threads(args.threads)
    runner = Runner({args.family.name: args.family}, device="cpu", dtype=args.dtype, fixed_batch=args.fixed_batch, compile=True,
                    cpp_wrapper=not args.python_wrapper)
    runner.warm_up()
    if not runner.compiles:
        return 1
    return PYTHON_WRAPPER_EXIT if runner.pipelines[args.family.name].cpp_wrapper != (not args.python_wrapper) else 0


def _exit_with_parent() -> None:
    """Exit when the service that started this helper is gone (killed during its warm-up, even
    before this helper got going): no compile goes on for nobody."""
    given = os.environ.get(PARENT_VARIABLE, "")
    parent = int(given) if given.isdigit() else os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="fewstep-parent-watch").start()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C in the terminal reaches the service and its helpers alike
        sys.exit(130)
