"""The installed wheel works outside the repository: a training step and its gradient.

``nox -s package`` runs this with the Python of a clean environment that has the
wheel (and NumPy) installed, and nothing of the checkout on its path.
"""

from __future__ import annotations

import numpy as np

import bn_portable as bn


def main() -> None:
    x = np.random.default_rng(0).normal(size=(8, 4, 4, 3)).astype(np.float32)
    y, state = bn.batch_norm(x, decay=0.9, scale=True, fused=True)
    y, state, vjp = bn.batch_norm_vjp(x, state, decay=0.9, scale=True, fused=True)
    dx, _dgamma, _dbeta = vjp(np.ones_like(y))
    assert y.shape == x.shape and state.moving_variance.shape == (3,) and dx.shape == x.shape
    # From site-packages, not from a checkout's src/ that happened to be on the path.
    assert bn.__file__.endswith("site-packages/bn_portable/__init__.py"), bn.__file__
    print("bn_portable", bn.__version__, "from the wheel: ok")


if __name__ == "__main__":
    main()
