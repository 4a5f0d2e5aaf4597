"""PCA of correlated 3-D data: the covariance's top eigenpairs by power (subspace) iteration."""

import numpy as np

import fastla as fl

rng = np.random.default_rng(0)
latent = rng.standard_normal((500, 2)) * [3.0, 1.0]
mixing = np.array([[1.0, 0.5, 0.2], [0.3, -1.0, 0.4]])
X = latent @ mixing + 0.1 * rng.standard_normal((500, 3)) + [5.0, -1.0, 2.0]

components, variance, Z = fl.ml.pca(X, 2)
total = np.var(X - X.mean(axis=0), axis=0, ddof=1).sum()
print("components:\n", np.round(components, 4))
print("explained variance:", np.round(variance, 4))
print("explained variance ratio:", np.round(variance / total, 4))
print("first 3 projected points:\n", np.round(Z[:3], 4))
