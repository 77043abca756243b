"""PyTorch's fast paths: which generic kernel each replaces, and how they read the switch.

Each module says how its arithmetic stays within the accuracy contract:

- ``_torch_fused``: TensorFlow's fused kernel (``fused_training_core``,
  ``fused_inference``) in few passes, its formula kept, differentiable through
  PyTorch's own batch-norm backward;
- ``_torch_layer_training``: a training call's whole step (statistics, both moving
  averages, y) after one check, for the Keras layer (``layer_training``) and the
  fused kernel (``fused_layer_training``);
- ``_torch_moments``: ``local_moments``, the generic two passes over a
  channel-grouped view of the batch (``torch.var_mean`` is not faster, and many
  times slower for a channels-last reduction on CPU);
- ``_torch_weighted``: per-example weighted statistics, block by block;
- ``_torch_normalize``: the generic ``x·inv + shift`` with the shift added in place
  (and why PyTorch's one-pass inference kernel, whose formula this is, does not
  serve it), and ``inverse_std_of``, ``rsqrt(variance + ε)`` for every torch kernel;
- ``_torch_averages``: ``move_toward``, a moving average in one fused multiply-add;
- ``_torch_gradients``: PyTorch's batch-norm backward with given statistics, and the
  backward's sums and dx, block by block;
- ``_torch_blocks``: the cache-sized blocks of a CPU batch these passes share.
"""

from __future__ import annotations

from ._registry import Kernel
from ._switch import fast_paths_enabled
from ._torch_averages import move_toward
from ._torch_fused import fused_inference, fused_training_core
from ._torch_gradients import gradient_input, gradient_sums
from ._torch_layer_training import fused_layer_training, layer_training
from ._torch_moments import local_moments
from ._torch_normalize import normalize
from ._torch_weighted import weighted_local_moments


def enabled() -> bool:
    """The fast-path switch; under ``torch.compile`` read once, at tracing, as a constant.

    A ``ContextVar`` read is a graph break for the compiler; marked constant,
    the compiler calls it once while tracing and keeps the answer in the graph.
    """
    return fast_paths_enabled()


# What torch.compiler.assume_constant_result does, without its import of the compiler: that
# import took 3 s of a 2-core machine, every eager program's first call paying for a compiler
# it never runs. tests/test_compile.py checks that the public decorator marks a function so.
enabled._dynamo_marked_constant = True  # type: ignore[attr-defined]

#: The generic kernels these replace (``_native._registry``).
KERNELS = {
    Kernel.FUSED_TRAINING: fused_training_core,
    Kernel.FUSED_INFERENCE: fused_inference,
    Kernel.LOCAL_MOMENTS: local_moments,
    Kernel.WEIGHTED_MOMENTS: weighted_local_moments,
    Kernel.NORMALIZE: normalize,
    Kernel.GRADIENT_SUMS: gradient_sums,
    Kernel.GRADIENT_INPUT: gradient_input,
    Kernel.MOVE_TOWARD: move_toward,
    Kernel.LAYER_TRAINING: layer_training,
    Kernel.FUSED_LAYER_TRAINING: fused_layer_training,
}
