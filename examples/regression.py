"""Linear and ridge regression by the normal equations (XᵀX w = Xᵀy) on fastla's kernels."""

import numpy as np

import fastla as fl

np.set_printoptions(suppress=True)
rng = np.random.default_rng(0)
n, d = 1000, 5
X = rng.standard_normal((n, d))
true_w = np.array([1.5, -2.0, 0.0, 0.5, 3.0])
y = 4.0 + X @ true_w + 0.1 * rng.standard_normal(n)

w = fl.ml.linear_regression(X, y)
print("intercept + weights:", np.round(w, 3))
pred = w[0] + X @ w[1:]
r2 = 1 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2)
print(f"R^2 = {r2:.4f}")

w_ridge = fl.ml.linear_regression(X, y, alpha=100.0)
print("ridge (alpha=100):   ", np.round(w_ridge, 3))

X_bad = np.hstack([X, X[:, :1] * 2])  # a collinear column
try:
    fl.ml.linear_regression(X_bad, y)
except np.linalg.LinAlgError as err:
    print("collinear features ->", type(err).__name__ + ":", err)
print("with alpha=1e-3:     ", np.round(fl.ml.linear_regression(X_bad, y, alpha=1e-3), 3))
