"""``bn_portable.flax``: TensorFlow's batch-norm layer as a ``flax.nnx`` module.

``BatchNorm`` holds the layer's variables the nnx way (``nnx.Param`` ``beta``
and ``gamma``, or ``None``; ``nnx.BatchStat`` statistics named as TensorFlow
names them), validates its options once, in ``__init__``, and runs one step of
TensorFlow's layer with them in ``__call__`` (``bn_portable.batch_norm``'s
numbers); ``use_running_average`` (set by nnx's ``.train()`` and ``.eval()``)
selects training or inference, as in ``flax.nnx.BatchNorm``. ``axis_name``
synchronizes the statistics over a mapped axis. Conversions:
``BatchNorm.from_flax``, ``BatchNorm.from_state`` and ``.to_flax`` (the
functions ``from_flax`` and ``to_flax`` call them).

Importing this module imports JAX and Flax; ``import bn_portable`` does not.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal, TypeVar, cast

import jax
import jax.numpy as jnp
from flax import nnx

from ._flax_support import (
    NOT_OPTIONS,
    OPTION_NAMES,
    ModuleOptions,
    check_axis_name,
    check_mode,
    flax_arguments,
    flax_module,
    module_options,
    variable_dtype,
)
from ._lib._compat import array_namespace, device
from ._tf._fields import FIELDS, PARAMETERS, required_fields
from ._tf._options import check_module_options, layer_options
from ._tf._plan import prepare
from ._tf._state import BatchNormState, check_module_state, initial_state
from ._tf._steps import layer_step
from .distributed import jax_cross_replica_sum

DataFormat = Literal["NCHW", "NHWC"]

_Module = TypeVar("_Module", bound="BatchNorm")


class BatchNorm(nnx.Module):  # type: ignore[misc, unused-ignore]  # nnx is Any where untyped
    """``tf_slim.layers.batch_norm`` (``bn_portable.batch_norm``) as a ``flax.nnx.Module``.

    Parameters
    ----------
    num_features:
        The number of channels ``C``.
    data_format:
        ``"NHWC"`` (the default, channels last as in Flax and TensorFlow) or
        ``"NCHW"`` (channels on axis 1).
    dtype:
        The floating dtype of the variables (float32 by default). TensorFlow
        keeps float32 variables for float16 and bfloat16 input, and the
        input's dtype on its legacy path (``batch_weights`` or zero-debias).
    use_running_average:
        ``False`` (the default): training, the batch statistics normalize and
        the moving statistics move toward them; ``True``: inference with the
        moving statistics; ``None``: every call must say. nnx's ``.train()``
        and ``.eval()`` (and ``nnx.view``) set it, as for ``flax.nnx.BatchNorm``.
    axis_name:
        The mapped axis (``jax.vmap``, ``nnx.vmap``, ``shard_map``, ``pmap``) the
        batch is split along, or a tuple of them: the training statistics are
        then the global batch's (``bn_portable.distributed.jax_cross_replica_sum``).
        ``None``: each call's batch alone.
    **options:
        Any keyword of ``bn_portable.batch_norm`` but ``is_training`` (the
        mode), ``batch_weights`` (an argument of ``__call__``),
        ``cross_replica_sum`` (``axis_name``) and ``data_format``, with
        TensorFlow's defaults (``decay=0.999``, ``scale=False``,
        ``epsilon=0.001``...). Validated once, here.

    Attributes
    ----------
    beta, gamma:
        ``nnx.Param`` of shape ``(C,)`` with ``center``/``scale``, else ``None``.
    moving_mean, moving_variance, ...:
        ``nnx.BatchStat``: also ``moving_mean_biased``, ``local_step``
        (zero-debias), ``moving_stddev``, ``renorm_mean``, ``renorm_stddev``
        (renorm), ``skipped_steps`` (``skip_nonfinite``); ``None`` where absent.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from bn_portable.flax import BatchNorm
    >>> layer = BatchNorm(2, decay=0.9)                   # training mode, as nnx.BatchNorm
    >>> x = jnp.array([[1.0, 10.0], [3.0, 30.0]], dtype=jnp.float32)
    >>> print(layer(x))
    [[-0.9995004 -0.999995 ]
     [ 0.9995005  0.999995 ]]
    >>> print(layer.moving_mean[...], layer.moving_variance[...])
    [0.2 2. ] [ 1.       10.900001]
    >>> layer.eval()                                      # the moving statistics normalize
    >>> print(layer(x))
    [[0.7996003 2.4230187]
     [2.7986012 8.480565 ]]
    >>> print(layer(x, use_running_average=False).shape)  # a training step, whatever the mode
    (2, 2)
    """

    num_features: int
    data_format: DataFormat
    use_running_average: bool | None
    axis_name: str | tuple[str, ...] | None
    #: The variables this module has, in ``BatchNormState`` order.
    fields: tuple[str, ...]
    beta: nnx.Param[jax.Array] | None
    gamma: nnx.Param[jax.Array] | None
    moving_mean: nnx.BatchStat[jax.Array]
    moving_variance: nnx.BatchStat[jax.Array]
    moving_mean_biased: nnx.BatchStat[jax.Array] | None
    local_step: nnx.BatchStat[jax.Array] | None
    moving_stddev: nnx.BatchStat[jax.Array] | None
    renorm_mean: nnx.BatchStat[jax.Array] | None
    renorm_stddev: nnx.BatchStat[jax.Array] | None
    skipped_steps: nnx.BatchStat[jax.Array] | None
    #: The validated options of a training and of an inference step (static: hashable).
    _options: ModuleOptions

    def __init__(
        self,
        num_features: int,
        *,
        data_format: DataFormat = "NHWC",
        dtype: Any = jnp.float32,
        use_running_average: bool | None = False,
        axis_name: str | tuple[str, ...] | None = None,
        **options: Any,
    ) -> None:
        if isinstance(num_features, bool) or not isinstance(num_features, int):
            raise TypeError(f"num_features must be an int, got {num_features!r}")
        if num_features < 1:
            raise ValueError(f"num_features must be at least 1, got {num_features}")
        check_mode(use_running_average, "use_running_average", none=True)
        check_axis_name(axis_name)
        chosen_dtype = variable_dtype(dtype)
        check_module_options(options, OPTION_NAMES, NOT_OPTIONS)
        reducer = None if axis_name is None else jax_cross_replica_sum(axis_name)
        validated = layer_options(
            weighted=False, is_training=True, data_format=data_format,
            cross_replica_sum=reducer, **options,
        )
        self.num_features = num_features
        self.data_format = cast(DataFormat, validated.data_format)
        self.use_running_average = use_running_average
        self.axis_name = axis_name
        self.fields = required_fields(
            center=validated.center, scale=validated.scale, renorm=validated.renorm,
            zero_debias=validated.zero_debias_moving_mean, skip_nonfinite=validated.skip_nonfinite,
        )
        probe = jnp.zeros(0, chosen_dtype)
        initial = initial_state(
            self.fields, num_features, chosen_dtype, validated.param_initializers,
            array_namespace(probe), device(probe),
        )
        self._options = module_options(validated, axis_name)
        for field in FIELDS:
            value = getattr(initial, field)
            kind = nnx.Param if field in PARAMETERS else nnx.BatchStat
            setattr(self, field, None if value is None else kind(value))

    @property
    def options(self) -> Mapping[str, Any]:
        """The ``batch_norm`` options by name, as validated in ``__init__`` (a read-only view).

        ``param_initializers`` is None (used once) and ``renorm_clipping`` None
        when nothing is clipped; ``axis_name`` and ``data_format`` are attributes.
        """
        options = self._options.training
        values = {name: getattr(options, name) for name in OPTION_NAMES}
        values["param_initializers"] = None
        values["renorm_clipping"] = dict(options.renorm_clipping) or None
        return MappingProxyType(values)

    @property
    def state(self) -> BatchNormState:
        """The current variables as a ``BatchNormState`` of JAX arrays."""
        return BatchNormState(**{field: getattr(self, field)[...] for field in self.fields})

    def __call__(
        self,
        x: jax.Array,
        *,
        use_running_average: bool | None = None,
        batch_weights: jax.Array | None = None,
    ) -> jax.Array:
        """Normalize ``x``; a training step also moves the ``BatchStat`` variables.

        ``use_running_average`` given here overrides the attribute for this
        call. ``batch_weights``: one weight per sample (TensorFlow's weighted
        moments, its legacy path). Everything is checked before any variable
        changes, so a failing call leaves the module as it was.
        """
        if not isinstance(x, jax.Array):
            raise TypeError(f"x must be a jax.Array, got {type(x).__name__}")
        check_mode(use_running_average, "use_running_average", none=True)
        inference = self.use_running_average if use_running_average is None else use_running_average
        if inference is None:
            raise ValueError(
                "use_running_average is None both on the module and in the call: pass "
                "use_running_average=True/False, or call .train() or .eval() first"
            )
        channel = 1 if self.data_format == "NCHW" else x.ndim - 1
        if x.ndim >= 2 and x.shape[channel] != self.num_features:
            # Checked here to name the module's size, not the state's shapes.
            raise ValueError(
                f"x has {x.shape[channel]} channels on axis {channel} (data_format="
                f"{self.data_format!r}), but this module has num_features={self.num_features}"
            )
        options = self._options.inference if inference else self._options.training
        if batch_weights is not None and options.renorm:
            # The one check of the options that depends on a call argument.
            raise ValueError(
                "batch_weights cannot be given to a module with renorm=True "
                "(TensorFlow rejects the combination too)"
            )
        # prepare checks x and the state against the options and picks
        # TensorFlow's implementation (remembered per metadata, traced or not).
        xp, plan, state = prepare(x, self.state, batch_weights, options)
        y, new_state, _ = layer_step(x, state, batch_weights, options, plan, xp)
        if options.activation_fn is not None:
            y = options.activation_fn(y)
        if not inference:
            for field in self.fields:
                if field not in PARAMETERS:
                    getattr(self, field)[...] = getattr(new_state, field)
        return cast(jax.Array, y)

    def set_view(self, use_running_average: bool | None = None) -> None:
        """Called by ``nnx.view(module, use_running_average=...)``, as for ``nnx.BatchNorm``."""
        if use_running_average is not None:
            check_mode(use_running_average, "use_running_average", none=False)
            self.use_running_average = use_running_average

    def load_state(self, state: BatchNormState) -> None:
        """Set the variables from a ``BatchNormState``.

        The values may be JAX or NumPy arrays (as ``bn_portable.porting``
        returns them); they are converted to each variable's dtype. The state
        must have exactly this module's fields, each of its shape; all are
        checked before anything is set.
        """
        check_module_state(state, self.fields, "this module")
        values = {}
        for field in self.fields:
            current = getattr(self, field)[...]
            value = jnp.asarray(getattr(state, field))
            if value.shape != current.shape:
                raise ValueError(
                    f"state.{field} must have shape {current.shape}, got {value.shape}"
                )
            values[field] = value.astype(current.dtype)
        for field, value in values.items():
            getattr(self, field)[...] = value

    @classmethod
    def from_state(
        cls: type[_Module],
        state: BatchNormState,
        *,
        data_format: DataFormat = "NHWC",
        use_running_average: bool | None = False,
        axis_name: str | tuple[str, ...] | None = None,
        **options: Any,
    ) -> _Module:
        """A module holding ``state``: ``BatchNorm.from_state(state, **options)`` with the
        ``(state, options)`` a porting helper returns (``data_format`` included).

        The variables' dtype is the moving mean's (NumPy arrays become JAX
        arrays); the options must describe the state's fields.

        Examples
        --------
        >>> import numpy as np, jax.numpy as jnp
        >>> import bn_portable as bn
        >>> from bn_portable.flax import BatchNorm
        >>> state = bn.BatchNormState(moving_mean=np.zeros(2, np.float32),
        ...                           moving_variance=np.full(2, 4.0, np.float32))
        >>> layer = BatchNorm.from_state(state, center=False, use_running_average=True)
        >>> print(layer(jnp.array([[2.0, -2.0]], jnp.float32)))  # (x - 0) / sqrt(4 + 0.001)
        [[ 0.99987507 -0.99987507]]
        """
        if not isinstance(state, BatchNormState) or state.moving_mean is None:
            raise TypeError("state must be a BatchNormState with a moving_mean")
        mean = state.moving_mean
        shape = tuple(getattr(mean, "shape", ()))
        if len(shape) != 1 or not jnp.issubdtype(getattr(mean, "dtype", None), jnp.floating):
            raise ValueError(
                f"state.moving_mean must be a floating array of shape (C,), got "
                f"{getattr(mean, 'dtype', type(mean).__name__)} of shape {shape}"
            )
        module = cls(
            shape[0], data_format=data_format, dtype=mean.dtype,
            use_running_average=use_running_average, axis_name=axis_name, **options,
        )
        module.load_state(state)
        return module

    @classmethod
    def from_flax(cls: type[_Module], module: nnx.BatchNorm) -> _Module:
        """A ``BatchNorm`` from a ``flax.nnx.BatchNorm``, with its variables' values.

        What maps, and what changes:

        - ``momentum`` is ``decay`` (both weigh the old value), ``epsilon`` is
          kept (Flax's default is 1e-5, TensorFlow's 1e-3), ``use_bias`` and
          ``use_scale`` are ``center`` and ``scale``, ``bias``/``scale`` are
          ``beta``/``gamma`` and ``mean``/``var`` are ``moving_mean`` /
          ``moving_variance``; ``use_running_average``, ``axis_name`` are kept.
        - ``axis=-1`` is ``data_format="NHWC"``, ``axis=1`` ``"NCHW"``; other
          axes are refused.
        - ``fused=False``: Flax normalizes with the biased batch variance and
          moves ``var`` toward it, as TensorFlow's non-fused Keras path does
          (the fused kernel moves toward the Bessel-corrected variance).
        - The batch variance is computed in two passes, E[(x − E[x])²],
          always: Flax's default ``use_fast_variance=True`` computes
          E[x²] − E[x]² (less accurate where |mean| ≫ std); the results agree
          with ``use_fast_variance=False`` within float32 rounding.
        - With ``axis_name``, Flax averages the replicas' means (``pmean``,
          equal shards assumed); the statistics here are the global batch's
          for any shard sizes.
        - The output has the input's dtype (TensorFlow's rule); Flax's
          ``dtype=None`` promotes half-precision input to the float32 of its
          statistics.

        Refused (``ValueError``): ``axis_index_groups``, a ``dtype`` other than
        None/float32, a custom ``promote_dtype``, parameters whose dtype is not
        the statistics' (float32). Initializers (``scale_init``...) and
        variable metadata are not carried: the values are. Flax's call-time
        ``mask`` has no counterpart (``batch_weights`` weighs whole samples).

        Examples
        --------
        >>> from flax import nnx
        >>> from bn_portable.flax import BatchNorm
        >>> reference = nnx.BatchNorm(4, momentum=0.9, rngs=nnx.Rngs(0))
        >>> layer = BatchNorm.from_flax(reference)
        >>> layer.options["decay"], layer.options["epsilon"], layer.options["fused"]
        (0.9, 1e-05, False)
        >>> layer.to_flax().use_fast_variance               # the two-pass variance, as here
        False
        """
        arguments, values = flax_arguments(module)
        converted = cls(**arguments)
        converted.load_state(BatchNormState(**values))
        return converted

    def to_flax(self) -> nnx.BatchNorm:
        """The ``flax.nnx.BatchNorm`` equivalent of this module, with its variables' values.

        ``momentum = decay``, ``epsilon``, ``use_bias = center``,
        ``use_scale = scale``, ``axis`` -1 (NHWC) or 1 (NCHW),
        ``use_fast_variance=False`` (the two-pass variance, as here),
        ``use_running_average`` and ``axis_name`` kept. Only modules whose
        statistics follow Flax's conventions convert: ``fused=False`` (Flax
        moves the running variance toward the biased batch variance), no
        zero-debiasing, renorm, activation or ``skip_nonfinite``, float32
        variables (Flax keeps float32 statistics). Anything else is a
        ``ValueError`` listing every reason.
        """
        options = self._options.training
        return flax_module(
            self.state, options, data_format=self.data_format,
            use_running_average=self.use_running_average, axis_name=self.axis_name,
        )


def from_flax(module: nnx.BatchNorm) -> BatchNorm:
    """A ``BatchNorm`` from a ``flax.nnx.BatchNorm``: ``BatchNorm.from_flax(module)``."""
    return BatchNorm.from_flax(module)


def to_flax(module: BatchNorm) -> nnx.BatchNorm:
    """The ``flax.nnx.BatchNorm`` equivalent of a ``BatchNorm``: ``module.to_flax()``."""
    if not isinstance(module, BatchNorm):
        raise TypeError(f"module must be a bn_portable.flax.BatchNorm, got {type(module).__name__}")
    return module.to_flax()


__all__ = ["BatchNorm", "from_flax", "to_flax"]
