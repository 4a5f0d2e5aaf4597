"""Top-k cosine search over a corpus that is never in one piece: fastla's fused top-k kernel per
corpus chunk on a Dask LocalCluster, candidate lists merged by a tree reduction.

Default size: 10 000 queries against 2 000 000 x 256 float32 embeddings (~2 GB), generated
chunk-wise on the workers. Each task holds one corpus chunk and the queries' running top-k only.

    python examples/dask_topk.py                      # the full size (a minute or two on 2 cores)
    python examples/dask_topk.py --corpus 200000 --check
"""

import argparse
import resource
import time

import dask
import dask.array as da
import numpy as np
from distributed import Client, LocalCluster

import fastla as fl


def peak_rss_mib():
    """This process's peak resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--corpus", type=int, default=2_000_000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--chunk", type=int, default=100_000, help="corpus rows per chunk")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--check", action="store_true", help="compare with the in-memory search (small sizes)")
    args = p.parse_args()

    # one worker process per core, one thread each: fastla caps each task's Numba/BLAS threads at 1
    with (
        LocalCluster(
            n_workers=args.workers,
            threads_per_worker=1,
            host="127.0.0.1",
            dashboard_address=":0",
            silence_logs=40,
        ) as cluster,
        Client(cluster) as client,
    ):
        # both generated on the workers: a graph carrying 10 MB of queries would be shipped per call
        queries = (
            da.random.default_rng(0)
            .standard_normal((args.queries, args.dim), chunks=(args.queries, args.dim), dtype=np.float32)
            .persist()
        )
        corpus = da.random.default_rng(1).standard_normal(
            (args.corpus, args.dim), chunks=(args.chunk, args.dim), dtype=np.float32
        )
        print(
            f"{args.queries} queries x {args.corpus} x {args.dim} float32 corpus "
            f"({corpus.nbytes / 2**30:.2f} GiB in {corpus.numblocks[0]} chunks), k={args.k}, "
            f"{args.workers} workers x 1 thread"
        )
        # warm-up: each worker loads fastla's compiled kernels (or compiles them, the first time)
        t0 = time.perf_counter()
        probe = np.random.default_rng(0).standard_normal((2048, args.dim)).astype(np.float32)
        client.run(lambda: fl.cosine_topk(probe[:64], probe, 1, backend="numba")[1].shape)
        print(f"workers ready in {time.perf_counter() - t0:.1f} s")
        scores, idx = fl.cosine_topk(queries, corpus, args.k)
        t0 = time.perf_counter()
        scores, idx = dask.compute(scores, idx)
        dt = time.perf_counter() - t0
        pairs = args.queries * args.corpus
        print(
            f"done in {dt:.2f} s: {pairs / dt / 1e6:.0f} M query-corpus pairs/s, "
            f"{2 * pairs * args.dim / dt / 1e9:.0f} GFLOP/s (generation of the corpus included)"
        )
        peaks = client.run(peak_rss_mib)
        print(f"peak worker memory: {', '.join(f'{m:.0f} MiB' for m in peaks.values())}")
        print("query 0: top indices", idx[0][:5], "scores", np.round(scores[0][:5], 4))
        if args.check:
            s0, i0 = fl.cosine_topk(queries.compute(), corpus.compute(), args.k)
            assert np.array_equal(idx, i0), "indices differ from the in-memory search"
            np.testing.assert_allclose(scores, s0, rtol=1e-5)
            print("check: identical to the in-memory search")


if __name__ == "__main__":
    main()
