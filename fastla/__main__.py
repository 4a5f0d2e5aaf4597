"""Command line: ``python -m fastla {info,explain,warmup,bench,tune}``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

import numpy as np

from fastla._host import machine_facts


def _cmd_info(args):
    facts = machine_facts()
    width = max(map(len, facts))
    for key, value in facts.items():
        if key == "blas" and isinstance(value, list):
            value = (
                "; ".join(
                    f"{d['internal_api']} {d['version']} ({d['architecture']}, {d['num_threads']} threads)"
                    for d in value
                )
                or "none found"
            )
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        print(f"{key:<{width}}  {value}")
    print(f"{'auto_gemm':<{width}}  {importlib.import_module('fastla.matmul').auto_gemm_summary()}")
    print(f"{'auto_first_call':<{width}}  {importlib.import_module('fastla._first_use').summary()}")
    return 0


def _parse_shape(text):
    try:
        return tuple(int(x) for x in text.lower().split("x")) if text else ()
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad shape {text!r}: use e.g. 1000x1000") from None


def _cmd_explain(args):
    import fastla

    try:
        arrays = [np.zeros(shape, dtype=args.dtype) for shape in args.shape]
        impl, reason = fastla.explain(args.op, *arrays)
    except (TypeError, ValueError, np.linalg.LinAlgError) as exc:
        # the op's own argument error (an unknown op, a dtype, shapes that do not fit), not a traceback
        print(f"fastla explain: {exc}", file=sys.stderr)
        return 2
    print(f"{args.op}: {impl} — {reason}")
    return 0


def _cmd_warmup(args):
    from fastla import _warmup

    ops = args.ops.split(",") if args.ops else None
    dtypes = args.dtypes.split(",") if args.dtypes else _warmup.DTYPES
    try:
        _warmup.warmup(ops, dtypes, jobs=args.jobs)
    except (ValueError, RuntimeError) as exc:
        print(f"fastla warmup: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastla", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_info = sub.add_parser("info", help="versions, threads, BLAS, available backends")
    p_info.set_defaults(func=_cmd_info)
    p_exp = sub.add_parser("explain", help="which implementation auto picks, and why")
    p_exp.add_argument("op")
    p_exp.add_argument(
        "--shape",
        nargs="+",
        type=_parse_shape,
        required=True,
        help="one shape per array argument, e.g. 1000x1000 1000x1000",
    )
    p_exp.add_argument("--dtype", default="float64")
    p_exp.set_defaults(func=_cmd_explain)
    p_warm = sub.add_parser("warmup", help="compile the kernels into the on-disk cache ahead of first use")
    p_warm.add_argument("--ops", help="comma-separated ops (default: all)")
    p_warm.add_argument("--dtypes", help="comma-separated: float32,float64 (default: both)")
    try:
        from fastla.bench import cli as bench_cli
    except ImportError:  # pragma: no cover - bench ships with the package
        bench_cli = None
    p_warm.add_argument(
        "--jobs",
        type=int if bench_cli is None else bench_cli.positive(int),
        help="processes compiling at once (default: one per usable CPU: affinity, cgroup quota)",
    )
    p_warm.set_defaults(func=_cmd_warmup)
    if bench_cli is not None:
        bench_cli.add_parser(sub)
    from fastla import tune

    tune.add_parser(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:
        # the reader went away (`python -m fastla info | head -3`): stop quietly, as Python's
        # documentation advises, with the output pointed at /dev/null so that the interpreter's
        # last flush at exit raises nothing either
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
