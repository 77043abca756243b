"""``BatchNorm``: TensorFlow's batch-norm layer as a PyTorch ``nn.Module``.

The class behind ``bn_portable.torch`` (which re-exports it, with the
conversion functions; see that module and docs/torch.md). It lives in a module
of its own so that ``_torch_convert`` (whole models) can build modules and
``bn_portable.torch`` re-export both without an import cycle.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal, TypeVar, cast

import torch
from torch import nn

from ._lib._compat import array_namespace
from ._native._torch_blocks import needs_autograd
from ._tf._fields import FIELDS, PARAMETERS, required_fields
from ._tf._options import DEFAULTS, LayerOptions, check_module_options, layer_options
from ._tf._plan import prepare
from ._tf._state import BatchNormState, check_module_state, initial_state
from ._tf._steps import layer_step
from ._torch_step import torch_step

DataFormat = Literal["NCHW", "NHWC"]

#: The options a module takes: batch_norm's, less the two the module decides.
_OPTION_NAMES = tuple(name for name in DEFAULTS if name not in ("is_training", "data_format"))

#: Why some of batch_norm's arguments are not module options.
_NOT_OPTIONS = {
    "is_training": "it follows the module's mode: call .train() or .eval()",
    "batch_weights": "it is data: pass it to forward(x, batch_weights)",
    "mask": "it is data: pass it to forward(x, mask=mask)",
    "state": "the module holds the state: use load_batch_norm_state() or BatchNorm.from_state()",
}

_TORCH_KINDS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)

_Module = TypeVar("_Module", bound="BatchNorm")


class BatchNorm(nn.Module):
    """``tf_slim.layers.batch_norm`` (``bn_portable.batch_norm``) as an ``nn.Module``.

    Parameters
    ----------
    num_features:
        The number of channels ``C``.
    data_format:
        ``"NCHW"`` (the default here, PyTorch's layout: channels on axis 1) or
        ``"NHWC"`` (channels last, TensorFlow's default).
    device, dtype:
        Where and in which floating dtype the variables are created (PyTorch's
        defaults when omitted); ``forward`` checks that they have the dtype
        TensorFlow gives the variables for the input (see docs/torch.md).
    **options:
        Any keyword of ``bn_portable.batch_norm`` but ``is_training`` (the
        module's mode), ``batch_weights`` and ``mask`` (arguments of ``forward``) and
        ``data_format``, with TensorFlow's defaults (``decay=0.999``,
        ``scale=False``, ``epsilon=0.001``...). Validated once, here.

    Attributes
    ----------
    beta, gamma:
        ``nn.Parameter`` of shape ``(C,)`` with ``center``/``scale``, else
        ``None``, as ``nn.BatchNorm2d(affine=False)`` has ``weight``.
    moving_mean, moving_variance, ...:
        Buffers: also ``moving_mean_biased``, ``local_step`` (zero-debias),
        ``moving_stddev``, ``renorm_mean``, ``renorm_stddev`` (renorm),
        ``skipped_steps`` (``skip_nonfinite``); ``None`` where absent.
    """

    #: The state_dict layout (``nn.Module``'s convention); see ``_load_from_state_dict``.
    _version = 2

    num_features: int
    data_format: DataFormat
    #: The validated options of a training and of an inference step.
    _training_options: LayerOptions
    _inference_options: LayerOptions
    #: The variables this module has, in ``BatchNormState`` order.
    fields: tuple[str, ...]
    beta: nn.Parameter | None
    gamma: nn.Parameter | None
    moving_mean: torch.Tensor
    moving_variance: torch.Tensor
    moving_mean_biased: torch.Tensor | None
    local_step: torch.Tensor | None
    moving_stddev: torch.Tensor | None
    renorm_mean: torch.Tensor | None
    renorm_stddev: torch.Tensor | None
    skipped_steps: torch.Tensor | None

    def __init__(
        self,
        num_features: int,
        *,
        data_format: DataFormat = "NCHW",
        device: torch.device | str | int | None = None,
        dtype: torch.dtype | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, int):
            raise TypeError(f"num_features must be an int, got {num_features!r}")
        if num_features < 1:
            raise ValueError(f"num_features must be at least 1, got {num_features}")
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
        check_module_options(options, _OPTION_NAMES, _NOT_OPTIONS)
        validated = layer_options(weighted=False, is_training=True, data_format=data_format, **options)
        self.num_features = num_features
        self.data_format = cast(DataFormat, validated.data_format)
        self.fields = required_fields(
            center=validated.center, scale=validated.scale, renorm=validated.renorm,
            zero_debias=validated.zero_debias_moving_mean, skip_nonfinite=validated.skip_nonfinite,
        )
        self._statistics = tuple(field for field in self.fields if field not in PARAMETERS)
        probe = torch.empty(0, device=device)
        dtype = torch.get_default_dtype() if dtype is None else dtype
        initial = initial_state(
            self.fields, num_features, dtype, validated.param_initializers,
            array_namespace(probe), probe.device,
        )
        # TensorFlow uses the initializers once, to create the variables; forward
        # passes the state, and prepare refuses initializers given with one.
        self._training_options = dataclasses.replace(validated, param_initializers={})
        self._inference_options = dataclasses.replace(self._training_options, is_training=False)
        for field in FIELDS:
            value = getattr(initial, field)
            if field in PARAMETERS:
                self.register_parameter(field, None if value is None else nn.Parameter(value))
            else:
                self.register_buffer(field, value)

    @property
    def options(self) -> Mapping[str, Any]:
        """The ``batch_norm`` options by name, as validated in ``__init__`` (a read-only view).

        ``param_initializers`` is None (used once) and ``renorm_clipping`` None
        when nothing is clipped. To change one, build another module:
        ``BatchNorm.from_state(m.state, data_format=m.data_format, **{**m.options, ...})``.
        """
        options = self._training_options
        values = {name: getattr(options, name) for name in _OPTION_NAMES}
        values["param_initializers"] = None
        values["renorm_clipping"] = dict(options.renorm_clipping) or None
        return MappingProxyType(values)

    @property
    def state(self) -> BatchNormState:
        """The current variables as a ``BatchNormState`` (the live tensors, not copies)."""
        if "parametrizations" in self._modules:
            # torch.nn.utils.parametrize: gamma (or beta) is a property computing it.
            return BatchNormState(**{field: getattr(self, field) for field in self.fields})
        # Read from the dicts that hold them (torch.func.functional_call swaps tensors in
        # there too): nn.Module's attribute lookup costs a small call about 2 µs in all.
        parameters, buffers = self._parameters, self._buffers
        return BatchNormState(
            **{field: parameters[field] if field in parameters else buffers[field] for field in self.fields}
        )

    def forward(
        self, x: torch.Tensor, batch_weights: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Normalize ``x``; in training mode the buffers take the updated statistics.

        ``batch_weights`` and ``mask`` (Keras' mask: x's shape without the channel
        axis) are ``bn_portable.batch_norm``'s.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        options = self._training_options if self.training else self._inference_options
        if batch_weights is not None and options.renorm:
            # The one check of the options that depends on a forward argument.
            raise ValueError(
                "batch_weights cannot be given to a module with renorm=True "
                "(TensorFlow rejects the combination too)"
            )
        # x.is_cpu first: x.device makes a new torch.device object on every call.
        if torch.is_autocast_enabled("cpu" if x.is_cpu else x.device.type):
            # Autocast would re-type the core's reductions (sum, rsqrt) and change its
            # numbers; the input arrives in whatever dtype autocast gave it and is
            # normalized as TensorFlow normalizes that dtype. (Entered only when on:
            # the context costs a few microseconds, noticeable on an MLP's batch.)
            with torch.autocast(device_type=x.device.type, enabled=False):
                y, new_state = self._step(x, batch_weights, mask, options)
        else:
            y, new_state = self._step(x, batch_weights, mask, options)
        if self.training:
            buffers = self._buffers  # the statistics are buffers: no nn.Module.__getattr__ per field
            targets = [buffers[field] for field in self._statistics]
            # The new statistics carry no gradient (layer_step detaches them), so the copies
            # record nothing unless a buffer requires grad itself: only then is autograd
            # switched off, which costs a small call about 2 µs.
            with torch.no_grad() if needs_autograd(targets) else contextlib.nullcontext():
                for target, field in zip(targets, self._statistics):
                    target.copy_(getattr(new_state, field))  # type: ignore[union-attr]
        return y

    def _step(
        self, x: torch.Tensor, batch_weights: torch.Tensor | None, mask: torch.Tensor | None,
        options: LayerOptions,
    ) -> tuple[torch.Tensor, BatchNormState]:
        """y (activation applied) and the new state, the module's buffers untouched."""
        # prepare checks x and the state against the options and picks
        # TensorFlow's implementation; eagerly it remembers both per metadata.
        xp, plan, state = prepare(x, self.state, batch_weights, options, mask)
        if mask is None:
            y, new_state = torch_step(x, state, batch_weights, options, plan, xp)
        else:
            # The one-node training step (_torch_step) takes no mask: recorded op
            # by op, autograd differentiates the same masked composite instead.
            y, new_state, _ = layer_step(x, state, batch_weights, options, plan, xp, mask)
        if options.activation_fn is not None:
            y = options.activation_fn(y)
        return y, new_state

    def load_batch_norm_state(self, state: BatchNormState) -> None:
        """Copy a ``BatchNormState`` into the parameters and buffers.

        The values may be tensors or NumPy arrays (as ``bn_portable.porting``
        returns them); they are converted to each variable's dtype and device.
        The state must have exactly this module's fields, each of its shape;
        all are checked before anything is copied. (``load_state_dict`` loads
        a ``state_dict``, PyTorch's own format.)
        """
        check_module_state(state, self.fields, f"this module ({self.extra_repr()})")
        values = {}
        for field in self.fields:
            expected = tuple(getattr(self, field).shape)
            value = _as_tensor(getattr(state, field))
            if tuple(value.shape) != expected:
                raise ValueError(f"state.{field} must have shape {expected}, got {tuple(value.shape)}")
            values[field] = value
        _copy_tensors(self, values)

    def load_state(self, state: BatchNormState) -> None:
        """Alias of ``load_batch_norm_state`` (its earlier name, kept for existing code)."""
        self.load_batch_norm_state(state)

    @classmethod
    def from_state(
        cls: type[_Module],
        state: BatchNormState,
        *,
        data_format: DataFormat = "NCHW",
        device: torch.device | str | int | None = None,
        **options: Any,
    ) -> _Module:
        """A module holding ``state``: ``BatchNorm.from_state(state, **options)`` with the
        ``(state, options)`` a porting helper returns.

        The dtype is the moving mean's; the options must describe the state's fields.
        """
        if not isinstance(state, BatchNormState) or state.moving_mean is None:
            raise TypeError("state must be a BatchNormState with a moving_mean")
        mean = _as_tensor(state.moving_mean)
        if mean.ndim != 1 or not mean.is_floating_point():
            raise ValueError(
                f"state.moving_mean must be a floating array of shape (C,), got {mean.dtype} "
                f"of shape {tuple(mean.shape)}"
            )
        module = cls(mean.shape[0], data_format=data_format, device=device, dtype=mean.dtype, **options)
        module.load_batch_norm_state(state)
        return module

    @classmethod
    def from_torch(cls: type[_Module], module: nn.Module) -> _Module:
        """A ``BatchNorm`` from a ``torch.nn.BatchNorm1d/2d/3d``, on its device and dtype.

        The result runs TensorFlow's fused kernel (``fused=True``, channels first):
        its moving variance moves toward the Bessel-corrected batch variance, as
        PyTorch's running variance does, so ``running_var`` is copied unchanged.
        ``decay = 1 - momentum``, ``epsilon = eps``, ``center = scale = affine``.
        The residual differences (rank-3 input, float64, rounding of the decay)
        are listed in docs/torch.md. Raises ``ValueError`` for what has no
        TensorFlow counterpart and ``TypeError`` for other modules.
        """
        if isinstance(module, nn.modules.lazy.LazyModuleMixin):
            raise ValueError("module is a lazy batch norm that has not seen an input yet: call it once")
        if not isinstance(module, _TORCH_KINDS) or isinstance(module, nn.SyncBatchNorm):
            raise TypeError(
                f"module must be a torch.nn.BatchNorm1d, BatchNorm2d or BatchNorm3d, got "
                f"{type(module).__name__}"
            )
        if not module.track_running_stats or module.running_mean is None:
            raise ValueError(
                "module has track_running_stats=False: it normalizes with the batch's statistics "
                "in eval mode too, while TensorFlow's layer always uses its moving statistics "
                "in inference; there is nothing to convert"
            )
        if module.momentum is None:
            raise ValueError(
                "module has momentum=None (a cumulative average over all batches so far), but "
                "TensorFlow's moving statistics are exponential moving averages; give the module "
                "a momentum (decay = 1 - momentum)"
            )
        if module.running_mean.dtype != torch.float32:
            raise ValueError(
                f"module's statistics are {module.running_mean.dtype}, but TensorFlow's fused "
                "kernel (the one whose moving variance is Bessel-corrected, like PyTorch's) "
                "keeps float32 statistics and takes float16, bfloat16 or float32 input; "
                "convert the module with .float() first (autocast keeps it float32)"
            )
        converted = cls(
            module.num_features, data_format="NCHW", device=module.running_mean.device,
            dtype=module.running_mean.dtype, decay=1.0 - float(module.momentum),
            epsilon=float(module.eps), center=module.affine, scale=module.affine, fused=True,
        )
        values = {"moving_mean": module.running_mean, "moving_variance": module.running_var}
        if module.affine:
            values |= {"gamma": module.weight, "beta": module.bias}
        _copy_tensors(converted, values)
        if converted.gamma is not None and converted.beta is not None:
            converted.gamma.requires_grad_(module.weight.requires_grad)
            converted.beta.requires_grad_(module.bias.requires_grad)
        return converted.train(module.training)

    def to_torch(self, kind: type[nn.Module] = nn.BatchNorm2d) -> nn.Module:
        """The ``torch.nn.BatchNorm1d/2d/3d`` (``kind``) equivalent of this module.

        Only modules whose statistics follow PyTorch's conventions convert:
        channels first, ``fused=True`` (Bessel-corrected moving variance),
        ``center == scale``, no zero-debiasing, renorm or activation. Anything
        else is a ``ValueError`` listing every reason. ``momentum = 1 - decay``;
        ``num_batches_tracked`` starts at 0.
        """
        if kind not in _TORCH_KINDS:
            raise TypeError(f"kind must be torch.nn.BatchNorm1d, BatchNorm2d or BatchNorm3d, got {kind!r}")
        options = self._training_options
        refusals = [
            (self.data_format != "NCHW", "data_format is 'NHWC', PyTorch's batch norms take channels first"),
            (not options.fused, "fused=False moves the moving variance toward the biased batch "
             "variance, PyTorch toward the Bessel-corrected one"),
            (options.center != options.scale, "center and scale differ, PyTorch's affine sets both"),
            (options.zero_debias_moving_mean, "zero_debias_moving_mean=True has no PyTorch counterpart"),
            (options.renorm, "renorm=True has no PyTorch counterpart"),
            (options.activation_fn is not None, "activation_fn is set, PyTorch's batch norms have none"),
        ]
        reasons = [reason for refused, reason in refusals if refused]
        if reasons:
            raise ValueError("module cannot be converted: " + "; ".join(reasons))
        converted = kind(
            self.num_features, eps=options.epsilon, momentum=1.0 - options.decay,
            affine=options.scale, device=self.moving_mean.device, dtype=self.moving_mean.dtype,
        )
        values = {"running_mean": self.moving_mean, "running_var": self.moving_variance}
        if self.gamma is not None and self.beta is not None:
            values |= {"weight": self.gamma, "bias": self.beta}
        _copy_tensors(converted, values)
        return converted.train(self.training)

    def extra_repr(self) -> str:
        changed = [
            f"{name}={value!r}"
            for name, value in self.options.items()
            if value != DEFAULTS[name] and name != "param_initializers"
        ]
        return ", ".join([str(self.num_features), f"data_format={self.data_format!r}", *changed])

    def _load_from_state_dict(
        self, state_dict: Mapping[str, Any], prefix: str, local_metadata: dict[str, Any],
        strict: bool, missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str],
    ) -> None:
        # Version 1 (before the options became typed attributes) wrote the same
        # entries under the same names, absent variables left out as now, so it
        # loads as it is; a future change of names would convert older versions here.
        if strict and prefix + "running_mean" in state_dict and prefix + "moving_mean" not in state_dict:
            error_msgs.append(
                f"{prefix or 'the state_dict'} holds a torch.nn.BatchNorm's entries (running_mean, "
                "running_var, weight, bias), whose names and conventions differ: load them into "
                "the torch module and convert that with bn_portable.torch.from_torch"
            )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


def _copy_tensors(target: nn.Module, values: Mapping[str, Any]) -> None:
    """``target.<name>.copy_(value)`` for each entry, outside autograd (dtype and device converted)."""
    with torch.no_grad():
        for name, value in values.items():
            getattr(target, name).copy_(value)


def _as_tensor(value: Any) -> torch.Tensor:
    """A tensor as is (detached); other arrays copied (a read-only NumPy array makes
    ``torch.as_tensor`` warn that it shares memory PyTorch may write)."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    return torch.tensor(value)

