"""Scaled dot-product attention softmax(Q Kᵀ / sqrt(d)) V: weights, causal masking, multi-head."""

import numpy as np

import fastla as fl

rng = np.random.default_rng(0)
L, d = 4, 8
Q, K, V = (rng.standard_normal((L, d)) for _ in range(3))
out, weights = fl.scaled_dot_product_attention(Q, K, V, return_weights=True)
print("attention weights (rows sum to 1):\n", np.round(weights, 3))
print("output:\n", np.round(out, 3))
_, causal_w = fl.scaled_dot_product_attention(Q, K, V, is_causal=True, return_weights=True)
print("causal weights:\n", np.round(causal_w, 3))

q = rng.standard_normal((1, 8, 1024, 64)).astype(np.float32)
k = rng.standard_normal((1, 8, 1024, 64)).astype(np.float32)
v = rng.standard_normal((1, 8, 1024, 64)).astype(np.float32)
fast = fl.scaled_dot_product_attention(q, k, v, is_causal=True, backend="numba")
ref = fl.scaled_dot_product_attention(q, k, v, is_causal=True, backend="numpy")
print("8 heads x 1024 tokens, causal: max |numba - numpy| =", float(np.abs(fast - ref).max()))
