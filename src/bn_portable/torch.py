"""``bn_portable.torch``: TensorFlow's batch-norm layer as a PyTorch ``nn.Module``.

``BatchNorm`` holds the layer's variables the PyTorch way (``beta`` and
``gamma`` are ``nn.Parameter``s, the moving statistics buffers named as
TensorFlow names them) and calls the functional core ``bn_portable.batch_norm``
in ``forward``; ``train()``/``eval()`` select ``is_training``. ``from_torch``
builds one from a ``torch.nn.BatchNorm1d/2d/3d`` and ``to_torch`` goes back.

Importing this module imports PyTorch; ``import bn_portable`` does not.
See docs/torch.md for state_dict, torch.compile, autocast and DDP.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from ._layer import batch_norm, layer_options
from ._lib._compat import array_namespace
from ._state import BatchNormState, initial_state, required_fields

#: ``batch_norm``'s options a module takes, with batch_norm's (TensorFlow's) defaults.
_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(batch_norm).parameters.items()
    if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    and name not in ("is_training", "batch_weights", "data_format")
}

#: Why some of batch_norm's arguments are not module options.
_NOT_OPTIONS = {
    "is_training": "it follows the module's mode: call .train() or .eval()",
    "batch_weights": "it is data: pass it to forward(x, batch_weights)",
    "state": "the module holds the state: use load_state() or BatchNorm.from_state()",
}

_PARAMETERS = ("beta", "gamma")


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
        Where and in which dtype the parameters and buffers are created
        (PyTorch's defaults when omitted). The core checks that they have the
        dtype TensorFlow gives the variables for the input (float32 for
        float16/bfloat16/float32 input on the Keras paths, the input's dtype
        on tf-slim's legacy path); convert with ``.double()`` etc. as usual.
    **options:
        Any keyword of ``bn_portable.batch_norm`` except ``is_training`` (the
        module's mode), ``batch_weights`` (an argument of ``forward``) and
        ``data_format``; defaults are TensorFlow's (``decay=0.999``,
        ``scale=False``, ``epsilon=0.001``, ``fused=False``...).

    Attributes
    ----------
    beta, gamma:
        ``nn.Parameter`` of shape ``(C,)``, present when ``center``/``scale``.
    moving_mean, moving_variance:
        Buffers; plus ``moving_mean_biased`` and ``local_step`` with
        ``zero_debias_moving_mean=True`` and ``moving_stddev``, ``renorm_mean``,
        ``renorm_stddev`` with ``renorm=True``.
    """

    def __init__(
        self,
        num_features: int,
        *,
        data_format: str = "NCHW",
        device: Any = None,
        dtype: Any = None,
        **options: Any,
    ) -> None:
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, int):
            raise TypeError(f"num_features must be an int, got {num_features!r}")
        if num_features < 1:
            raise ValueError(f"num_features must be at least 1, got {num_features}")
        self.num_features = num_features
        self.data_format = data_format
        self.options = _module_options(options, data_format)
        self.fields = required_fields(
            center=self.options["center"],
            scale=self.options["scale"],
            zero_debias=self.options["zero_debias_moving_mean"],
            renorm=self.options["renorm"],
            skip_nonfinite=self.options["skip_nonfinite"],
        )
        dtype = torch.get_default_dtype() if dtype is None else dtype
        probe = torch.empty(0, device=device)
        initial = initial_state(
            self.fields,
            num_features,
            dtype,
            self.options["param_initializers"] or {},
            array_namespace(probe),
            probe.device,
        )
        # Initializers are only used here, as in TensorFlow; forward passes a state.
        self.options["param_initializers"] = None
        for field in self.fields:
            value = getattr(initial, field)
            if field in _PARAMETERS:
                self.register_parameter(field, nn.Parameter(value))
            else:
                self.register_buffer(field, value)

    @property
    def state(self) -> BatchNormState:
        """The current variables as a ``BatchNormState`` (the live tensors, not copies)."""
        return BatchNormState(**{field: getattr(self, field) for field in self.fields})

    def forward(self, x: torch.Tensor, batch_weights: torch.Tensor | None = None) -> torch.Tensor:
        """Normalize ``x``; in training mode the buffers take the updated statistics."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        # Autocast would re-type the core's reductions (sum, rsqrt) and change its
        # numbers; the input arrives in whatever dtype autocast gave it and is
        # normalized as TensorFlow normalizes that dtype.
        y: torch.Tensor
        with torch.autocast(device_type=x.device.type, enabled=False):
            y, new_state = batch_norm(
                x,
                self.state,
                is_training=self.training,
                batch_weights=batch_weights,
                data_format=self.data_format,
                **self.options,
            )
        if self.training:
            with torch.no_grad():
                for field in self.fields:
                    if field not in _PARAMETERS:
                        getattr(self, field).copy_(getattr(new_state, field))
        return y

    def load_state(self, state: BatchNormState) -> None:
        """Copy a ``BatchNormState`` of tensors or NumPy arrays (as ``bn_portable.porting``
        returns) into the parameters and buffers, converting dtype and device.

        All fields are checked before anything is copied.
        """
        if not isinstance(state, BatchNormState):
            raise TypeError(f"state must be a BatchNormState, got {type(state).__name__}")
        present = tuple(f for f in BatchNormState._fields if getattr(state, f) is not None)
        if present != self.fields:
            raise ValueError(
                f"state has the fields {', '.join(present) or 'none'}, but this module "
                f"({self.extra_repr()}) has {', '.join(self.fields)}"
            )
        values = {}
        for field in self.fields:
            target = getattr(self, field)
            value = torch.as_tensor(_host_or_tensor(getattr(state, field)))
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(
                    f"state.{field} must have shape {tuple(target.shape)}, got {tuple(value.shape)}"
                )
            values[field] = value
        with torch.no_grad():
            for field, value in values.items():
                getattr(self, field).copy_(value)

    @classmethod
    def from_state(
        cls,
        state: BatchNormState,
        *,
        data_format: str = "NCHW",
        device: Any = None,
        **options: Any,
    ) -> BatchNorm:
        """A module holding ``state``: ``BatchNorm.from_state(state, **options)`` with the
        ``(state, options)`` a porting helper returns.

        The dtype is the moving mean's; the options must describe the state's fields.
        """
        if not isinstance(state, BatchNormState) or state.moving_mean is None:
            raise TypeError("state must be a BatchNormState with a moving_mean")
        mean = torch.as_tensor(_host_or_tensor(state.moving_mean))
        if mean.ndim != 1:
            raise ValueError(f"state.moving_mean must have shape (C,), got {tuple(mean.shape)}")
        module = cls(
            mean.shape[0], data_format=data_format, device=device, dtype=mean.dtype, **options
        )
        module.load_state(state)
        return module

    def extra_repr(self) -> str:
        changed = [
            f"{name}={value!r}"
            for name, value in self.options.items()
            if value != _DEFAULTS[name] and name != "param_initializers"
        ]
        return ", ".join([str(self.num_features), f"data_format={self.data_format!r}", *changed])


def from_torch(module: nn.Module) -> BatchNorm:
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
    kinds = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    if not isinstance(module, kinds) or isinstance(module, nn.SyncBatchNorm):
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
    converted = BatchNorm(
        module.num_features,
        data_format="NCHW",
        device=module.running_mean.device,
        dtype=module.running_mean.dtype,
        decay=1.0 - float(module.momentum),
        epsilon=float(module.eps),
        center=module.affine,
        scale=module.affine,
        fused=True,
    )
    pairs = [("moving_mean", "running_mean"), ("moving_variance", "running_var")]
    if module.affine:
        pairs += [("gamma", "weight"), ("beta", "bias")]
    _copy_tensors(converted, module, pairs)
    if module.affine:
        converted.gamma.requires_grad_(module.weight.requires_grad)
        converted.beta.requires_grad_(module.bias.requires_grad)
    return converted.train(module.training)


def to_torch(module: BatchNorm, kind: type[nn.Module] = nn.BatchNorm2d) -> nn.Module:
    """The ``torch.nn.BatchNorm1d/2d/3d`` (``kind``) equivalent of a ``BatchNorm``.

    Only modules whose statistics follow PyTorch's conventions convert:
    channels first, ``fused=True`` (Bessel-corrected moving variance),
    ``center == scale``, no zero-debiasing, renorm or activation.
    ``momentum = 1 - decay``; ``num_batches_tracked`` starts at 0.
    """
    if not isinstance(module, BatchNorm):
        raise TypeError(f"module must be a bn_portable.torch.BatchNorm, got {type(module).__name__}")
    if kind not in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        raise TypeError(f"kind must be torch.nn.BatchNorm1d, BatchNorm2d or BatchNorm3d, got {kind!r}")
    options = module.options
    reasons = []
    if module.data_format != "NCHW":
        reasons.append("data_format is 'NHWC', PyTorch's batch norms take channels first")
    if not options["fused"]:
        reasons.append(
            "fused=False moves the moving variance toward the biased batch variance, "
            "PyTorch toward the Bessel-corrected one"
        )
    if options["center"] != options["scale"]:
        reasons.append("center and scale differ, PyTorch's affine sets both")
    for name in ("zero_debias_moving_mean", "renorm"):
        if options[name]:
            reasons.append(f"{name}=True has no PyTorch counterpart")
    if options["activation_fn"] is not None:
        reasons.append("activation_fn is set, PyTorch's batch norms have none")
    if reasons:
        raise ValueError("module cannot be converted: " + "; ".join(reasons))
    mean = module.moving_mean
    converted = kind(
        module.num_features,
        eps=options["epsilon"],
        momentum=1.0 - options["decay"],
        affine=options["scale"],
        device=mean.device,
        dtype=mean.dtype,
    )
    pairs = [("running_mean", "moving_mean"), ("running_var", "moving_variance")]
    if options["scale"]:
        pairs += [("weight", "gamma"), ("bias", "beta")]
    _copy_tensors(converted, module, pairs)
    return converted.train(module.training)


def _module_options(options: dict[str, Any], data_format: str) -> dict[str, Any]:
    """batch_norm's options with its defaults filled in, validated as batch_norm does."""
    for name in options:
        if name in _NOT_OPTIONS:
            raise TypeError(f"{name} is not a BatchNorm option: {_NOT_OPTIONS[name]}")
        if name not in _DEFAULTS:
            raise TypeError(
                f"BatchNorm got an unknown option {name!r}; expected some of "
                f"{', '.join(sorted(_DEFAULTS))}"
            )
    merged = {**_DEFAULTS, **options}
    validated = layer_options(weighted=False, is_training=True, data_format=data_format, **merged)
    # Numbers as validated (floats); mappings as given (None stays None, as batch_norm wants).
    return {
        name: merged[name] if name in ("param_initializers", "renorm_clipping") else getattr(validated, name)
        for name in _DEFAULTS
    }


def _copy_tensors(target: nn.Module, source: nn.Module, pairs: list[tuple[str, str]]) -> None:
    """``target.<t>.copy_(source.<s>)`` for each ``(t, s)``, outside autograd."""
    with torch.no_grad():
        for target_name, source_name in pairs:
            getattr(target, target_name).copy_(getattr(source, source_name))


def _host_or_tensor(value: Any) -> Any:
    """A tensor as is; other arrays through NumPy (``torch.as_tensor`` takes both)."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    return value


__all__ = ["BatchNorm", "from_torch", "to_torch"]
