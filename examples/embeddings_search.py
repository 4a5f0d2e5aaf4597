"""Word-embedding similarity: a cosine matrix for a few words, then top-k search over a corpus."""

import numpy as np

import fastla as fl

rng = np.random.default_rng(0)
words = ["king", "queen", "man", "woman", "apple"]
base = rng.standard_normal((3, 50))
emb = np.stack([base[0] + base[1], base[0] + base[2], base[1], base[2], rng.standard_normal(50)])

print("cosine(king, queen) =", round(fl.cosine_similarity(emb[0], emb[1]), 4))
sim = fl.cosine_similarity(emb)
print("similarity matrix:\n", np.round(sim, 3))

corpus = rng.standard_normal((100_000, 64)).astype(np.float32)
queries = corpus[[10, 20, 30]] + 0.1 * rng.standard_normal((3, 64)).astype(np.float32)
scores, idx = fl.cosine_topk(queries, corpus, k=5)
print("top-5 corpus rows per query:\n", idx)
print("their scores:\n", np.round(scores, 4))
