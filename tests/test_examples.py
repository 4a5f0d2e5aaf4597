"""Every script in examples/ runs to completion and prints what it promises."""

import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"
EXPECT = {
    "regression.py": "R^2 = 0.99",
    "pca.py": "explained variance ratio: [0.904",
    "network.py": "step 300",
    "embeddings_search.py": "top-5 corpus rows per query",
    "softmax_cross_entropy.py": "[0.6285 0.2312 0.1402]",
    "attention.py": "causal weights",
    "matmul_compare.py": "512x512",
    "dask_topk.py": "check: identical to the in-memory search",
    "numba_kernels.py": "same fits as np.linalg.solve in Numba: True",
}
# small sizes for the scripts whose defaults are the full-size study
ARGS = {
    "dask_topk.py": ["--queries", "300", "--corpus", "50000", "--dim", "64", "--chunk", "12000", "--check"]
}
NEEDS = {"dask_topk.py": "distributed"}


def test_every_example_is_listed():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECT)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECT))
def test_example_runs(name):
    if name in NEEDS:
        pytest.importorskip(NEEDS[name])
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *ARGS.get(name, [])],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert EXPECT[name] in proc.stdout, proc.stdout[-2000:]
