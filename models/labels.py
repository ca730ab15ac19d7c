"""The label rule, once: a classifier's output → class indices.

One column is the probability of the positive class (``>= 0.5``); several columns are class
scores (argmax). Serving (the kinds, the rollout's agreement), the export's parity proof and
training's evaluation all use it, so a label means the same thing everywhere.
"""

from __future__ import annotations

import numpy as np

THRESHOLD = 0.5


def labels_of(output: np.ndarray) -> np.ndarray:
    """int64 [N]: the class of each of the N items of ``output`` ([N], [N,1] or [N,K])."""
    flat = output.reshape(output.shape[0], -1)
    if flat.shape[1] == 1:  # the probability of the positive class
        return (flat[:, 0] >= THRESHOLD).astype(np.int64)
    return flat.argmax(axis=1)
