"""Softmax, log-softmax and cross-entropy of a batch of logits."""

import numpy as np

import fastla as fl

z = np.array([2.0, 1.0, 0.5])
print("softmax([2, 1, 0.5])     =", np.round(fl.softmax(z), 4))
print("log_softmax([2, 1, 0.5]) =", np.round(fl.log_softmax(z), 4))
print("stable on large logits:  ", np.round(fl.softmax(np.array([1000.0, 999.0, 0.0])), 4))

rng = np.random.default_rng(0)
logits = rng.standard_normal((8, 10)) * 2
targets = rng.integers(0, 10, 8)
print("cross-entropy (mean) =", round(float(fl.cross_entropy(logits, targets)), 4))
print("per-sample:", np.round(fl.cross_entropy(logits, targets, reduction="none"), 4))
print("with label smoothing 0.1 =", round(float(fl.cross_entropy(logits, targets, label_smoothing=0.1)), 4))
