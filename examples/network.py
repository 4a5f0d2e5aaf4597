"""A 2-layer network (relu hidden layer, sigmoid output): forward, backward, a few SGD steps.

Weights are (out, in), as in torch.nn.functional.linear: a layer computes W @ x + b for one sample
and X @ W.T + b for a batch of rows.
"""

import numpy as np

import fastla as fl

rng = np.random.default_rng(0)
X = rng.standard_normal((256, 4))
y = (X[:, 0] * X[:, 1] > 0).astype(float)[:, None]  # XOR-like labels
W1, b1 = 0.5 * rng.standard_normal((16, 4)), np.zeros(16)
W2, b2 = 0.5 * rng.standard_normal((1, 16)), np.zeros(1)

print("one sample forward:", np.round(fl.ml.mlp_forward(X[0], [(W1, b1, "relu"), (W2, b2, "sigmoid")]), 4))
lr = 0.5
for step in range(301):
    h = fl.ml.dense_forward(X, W1, b1, "relu")
    p = fl.ml.dense_forward(h, W2, b2, "sigmoid")
    loss = -np.mean(y * np.log(p + 1e-12) + (1 - y) * np.log(1 - p + 1e-12))
    grad_p = (p - y) / (p * (1 - p) + 1e-12) / len(X)  # d(binary cross-entropy)/dp
    dW2, db2, dh = fl.ml.dense_backward(h, W2, b2, grad_p, "sigmoid")
    dW1, db1, _ = fl.ml.dense_backward(X, W1, b1, dh, "relu")
    W1, b1, W2, b2 = W1 - lr * dW1, b1 - lr * db1, W2 - lr * dW2, b2 - lr * db2
    if step % 100 == 0:
        print(f"step {step:3d}: loss {loss:.4f}, accuracy {np.mean((p > 0.5) == y):.3f}")
