"""``convert_batch_norms``: every ``torch.nn.BatchNorm1d/2d/3d`` of a model as a ``BatchNorm``.

Without TensorFlow's variables each module becomes ``BatchNorm.from_torch(module)``;
with them (``{tf_layer_name: (state, options)}``, what the porting helpers return)
each becomes ``BatchNorm.from_state(state, **options)`` in PyTorch's layout. The
whole call is checked before the model is touched, so a refusal changes nothing,
and a ``ConversionReport`` says what was replaced and what differs from the
PyTorch modules. Re-exported by ``bn_portable.torch``; docs/torch.md describes it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

from torch import nn

from ._tf._options import DEFAULTS
from ._tf._state import BatchNormState
from ._torch_module import BatchNorm

#: Every batch norm of torch.nn (the three kinds, their lazy forms, SyncBatchNorm,
#: subclasses): all are found, so that none is left unconverted without a word.
_AnyTorchBatchNorm = nn.modules.batchnorm._BatchNorm
_CONVERTIBLE = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclasses.dataclass(frozen=True)
class ConvertedBatchNorm:
    """One ``torch.nn.BatchNorm*d`` that ``convert_batch_norms`` replaced.

    Attributes
    ----------
    name:
        The module's name in the model, as ``model.named_modules()`` gives it.
    tf_name:
        The TensorFlow layer whose state was loaded, or ``None`` (``from_torch``).
    torch_type:
        The class of the replaced module (``torch.nn.BatchNorm2d``...).
    num_features:
        Its number of channels.
    changes:
        ``{option: (from the torch module, now)}`` for every ``BatchNorm`` option
        the TensorFlow layer sets differently from the PyTorch module, in
        bn_portable's terms: the torch side is what ``from_torch`` would build
        (``decay = 1 - momentum``, or ``None`` for ``momentum=None``;
        ``epsilon = eps``; ``center = scale = affine``; ``fused=True``; the
        defaults otherwise), plus ``"dtype"`` where the variables' dtype differs
        from the module's. Empty without ``batch_norms``. Read-only.
    """

    name: str
    tf_name: str | None
    torch_type: type[nn.Module]
    num_features: int
    changes: Mapping[str, tuple[Any, Any]]

    def describe_changes(self) -> str:
        """``"decay 0.9 -> 0.99; epsilon 1e-05 -> 0.001"``, or ``"-"`` for none."""
        parts = [f"{option} {old!r} -> {new!r}" for option, (old, new) in self.changes.items()]
        return "; ".join(parts) or "-"


@dataclasses.dataclass(frozen=True)
class ConversionReport:
    """What ``convert_batch_norms`` replaced: one ``ConvertedBatchNorm`` per module.

    In the order of ``model.named_modules()``; ``len``, iteration and
    ``report[torch_name]`` read it, ``str(report)`` is a table.
    """

    modules: tuple[ConvertedBatchNorm, ...]

    def __len__(self) -> int:
        return len(self.modules)

    def __iter__(self) -> Iterator[ConvertedBatchNorm]:
        return iter(self.modules)

    def __getitem__(self, name: str) -> ConvertedBatchNorm:
        """The record of the module named ``name`` in the model."""
        for entry in self.modules:
            if entry.name == name:
                return entry
        raise KeyError(f"no batch norm named {name!r} was converted")

    def __str__(self) -> str:
        if not self.modules:
            return "no batch norms converted"
        rows = [("torch module", "class", "channels", "TensorFlow layer", "changes")]
        rows += [
            (e.name, e.torch_type.__name__, str(e.num_features), e.tf_name or "-",
             e.describe_changes())
            for e in self.modules
        ]
        widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
        lines = ("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows)
        return "\n".join(line.rstrip() for line in lines)


def convert_batch_norms(
    model: nn.Module,
    batch_norms: Mapping[str, tuple[BatchNormState, Mapping[str, Any]]] | None = None,
    *,
    names: Mapping[str, str] | Callable[[str], str] | None = None,
) -> tuple[nn.Module, ConversionReport]:
    """Replace every ``torch.nn.BatchNorm1d/2d/3d`` of ``model`` by a ``BatchNorm``, in place.

    Parameters
    ----------
    model:
        The PyTorch model; nested submodules are searched, and a module used at
        several places is replaced by one ``BatchNorm`` at all of them.
    batch_norms:
        ``None``: each module becomes ``BatchNorm.from_torch(module)``, with its
        own values and settings and its refusals (``track_running_stats=False``,
        ``momentum=None``, dtypes other than float32, lazy and synchronized
        modules).

        Otherwise TensorFlow's layers, ``{tf_layer_name: (state, options)}``, as
        ``bn_portable.porting.load_keras_batch_norm`` returns one layer and
        ``load_keras_batch_norms`` a file's: each module becomes
        ``BatchNorm.from_state(state, **options)``, every option passed on, but
        with ``data_format="NCHW"``: the model's tensors stay channels first
        (TensorFlow's NHWC and NCHW layers compute the same per-channel numbers).
        The variables keep the dtype TensorFlow stored (float32, the dtype its
        layer has for float32, float16 and bfloat16 input: for float64 input call
        ``.double()`` on the model afterwards) and go to the replaced module's
        device; its ``training`` mode and the ``requires_grad`` of ``weight`` and
        ``bias`` carry over to ``gamma`` and ``beta``. Its ``momentum``, ``eps``,
        ``affine`` and dtype give way to TensorFlow's (the report lists each
        difference). Refused: ``track_running_stats=False`` (batch statistics in
        eval mode, where TensorFlow's layer uses its moving ones), lazy and
        synchronized modules. No option is refused for the module's kind, as none
        contradicts one: ``fused=True`` on a ``BatchNorm1d`` runs TensorFlow's
        fused kernel for rank-2 input (tf-slim's fused path: the statistics of a
        fused layer) and, as TensorFlow would, its composite for rank-3 input
        (whose moving variance moves toward the biased batch variance, see
        docs/torch.md).
    names:
        TensorFlow's layer name for each module's name (as ``model.named_modules()``
        gives it, e.g. ``"layer1.0.bn1"``): a mapping, which must name every batch
        norm of the model and nothing else, or a function; ``None``, the module's
        name itself. Only with ``batch_norms``.

    Returns
    -------
    (model, report):
        ``model`` itself, modified, and a ``ConversionReport``.

    Raises
    ------
    ValueError
        Before anything is replaced, listing every problem, each naming the
        module and the TensorFlow layer: a module ``from_torch`` or ``from_state``
        refuses (an option ``BatchNorm`` does not know, which it reports as a
        ``TypeError``, included), a layer missing from ``batch_norms``, a state
        whose channel count differs from ``num_features``, two modules given the
        same layer, a layer of ``batch_norms`` no module uses (pass only those
        you load: ``{k: v for k, v in batch_norms.items() if k in wanted}``),
        entries of ``names`` that are no batch norm of the model.
    TypeError
        For arguments of the wrong type, ``names`` without ``batch_norms``, and a
        model that is itself a batch norm (convert it with ``BatchNorm.from_torch``
        or ``BatchNorm.from_state``). An exception of a ``names`` function passes
        through, the model unchanged.

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> from torch import nn
    >>> import bn_portable as bn
    >>> from bn_portable.torch import BatchNorm, convert_batch_norms
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, momentum=0.1))
    >>> model, report = convert_batch_norms(model)
    >>> isinstance(model[1], BatchNorm), model[1].options["decay"]
    (True, 0.9)
    >>> print(report)
    torch module  class        channels  TensorFlow layer  changes
    1             BatchNorm2d  8         -                 -

    With a TensorFlow layer's variables (NumPy arrays, as read from a file) and options:

    >>> state = bn.BatchNormState(
    ...     beta=np.zeros(8, np.float32), gamma=np.ones(8, np.float32),
    ...     moving_mean=np.zeros(8, np.float32), moving_variance=np.ones(8, np.float32))
    >>> options = {"decay": 0.99, "epsilon": 0.001, "scale": True, "fused": True,
    ...            "data_format": "NHWC"}
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)).eval()
    >>> model, report = convert_batch_norms(model, {"bn": (state, options)}, names={"1": "bn"})
    >>> print(report)
    torch module  class        channels  TensorFlow layer  changes
    1             BatchNorm2d  8         bn                decay 0.9 -> 0.99; epsilon 1e-05 -> 0.001
    >>> model[1].data_format, model[1].training, model(torch.ones(2, 3, 5, 5)).shape
    ('NCHW', False, torch.Size([2, 8, 3, 3]))
    """
    _check_arguments(model, batch_norms, names)
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, _AnyTorchBatchNorm)]
    problems: list[str] = []
    causes: list[BaseException] = []
    tf_names = [None] * len(found) if batch_norms is None else _tf_names(found, names, problems)
    converted: dict[int, tuple[BatchNorm, ConvertedBatchNorm]] = {}
    for (name, module), tf_name in zip(found, tf_names):
        layer = f", TensorFlow layer {tf_name!r}" if tf_name else ""
        where = f"{name!r} ({type(module).__name__}{layer})"
        try:
            if batch_norms is None:
                replacement = BatchNorm.from_torch(module)
            elif tf_name is None:
                continue  # its name was a problem already
            else:
                replacement = _from_tensorflow(module, tf_name, batch_norms)
        except (TypeError, ValueError) as error:
            problems.append(f"{where}: {error}")
            causes.append(error)
            continue
        record = ConvertedBatchNorm(
            name, tf_name, type(module), int(module.num_features), _changes(module, replacement)
        )
        converted[id(module)] = (replacement, record)
    if batch_norms is not None:
        unused = sorted(set(batch_norms) - {tf_name for tf_name in tf_names if tf_name is not None})
        problems += [
            f"TensorFlow layer {tf_name!r} of batch_norms: no module of the model is given it "
            "(leave it out of batch_norms to load a part of a model)"
            for tf_name in unused
        ]
    if problems:
        raise ValueError(
            f"convert_batch_norms changed nothing: {len(problems)} problem(s):\n"
            + "\n".join(f"- {problem}" for problem in problems)
        ) from (causes[0] if causes else None)
    _replace(model, {key: replacement for key, (replacement, _) in converted.items()})
    return model, ConversionReport(tuple(record for _, record in converted.values()))


def _check_arguments(model: Any, batch_norms: Any, names: Any) -> None:
    """The arguments' types (their contents are checked with the model's modules)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, _AnyTorchBatchNorm):
        raise TypeError(
            f"model is itself a {type(model).__name__}, which cannot be replaced in place: "
            "convert it with BatchNorm.from_torch(model) or BatchNorm.from_state(state, **options)"
        )
    if batch_norms is not None and not isinstance(batch_norms, Mapping):
        raise TypeError(
            f"batch_norms must be a mapping {{tf_layer_name: (state, options)}} or None, got "
            f"{type(batch_norms).__name__}"
        )
    if names is not None and not (isinstance(names, Mapping) or callable(names)):
        raise TypeError(f"names must be a mapping, a function or None, got {type(names).__name__}")
    if names is not None and batch_norms is None:
        raise TypeError("names maps modules to TensorFlow layers: it needs batch_norms")


def _tf_names(
    found: list[tuple[str, _AnyTorchBatchNorm]],
    names: Mapping[str, str] | Callable[[str], str] | None,
    problems: list[str],
) -> list[str | None]:
    """Each module's TensorFlow layer name (``None`` where that is a problem, then noted)."""
    result: list[str | None] = []
    users: dict[str, str] = {}
    for name, module in found:
        where = f"{name!r} ({type(module).__name__})"
        if names is None:
            tf_name: object = name
        elif isinstance(names, Mapping):
            if name not in names:
                problems.append(f"{where}: names has no TensorFlow layer for it")
                result.append(None)
                continue
            tf_name = names[name]
        else:
            tf_name = names(name)
        if not isinstance(tf_name, str):
            problems.append(f"{where}: names gives {tf_name!r}, not a TensorFlow layer name")
            result.append(None)
            continue
        if tf_name in users:
            # Two modules would hold two copies of one layer's statistics and drift apart;
            # a layer TensorFlow applies twice is one module used twice in PyTorch.
            problems.append(
                f"{where}: TensorFlow layer {tf_name!r} is given to {users[tf_name]!r} too "
                "(use one module at both places to share a layer)"
            )
            result.append(None)
            continue
        users[tf_name] = name
        result.append(tf_name)
    if isinstance(names, Mapping):
        known = {name for name, _ in found}
        problems += [
            f"names maps {key!r}, which is no batch norm of the model"
            for key in names
            if key not in known
        ]
    return result


def _from_tensorflow(
    module: _AnyTorchBatchNorm, tf_name: str, batch_norms: Mapping[str, Any]
) -> BatchNorm:
    """``BatchNorm.from_state`` with the layer's state and options, for this module."""
    if isinstance(module, nn.modules.lazy.LazyModuleMixin):
        raise ValueError(
            "a lazy batch norm that has not seen an input yet has no channel count: call it once"
        )
    if not isinstance(module, _CONVERTIBLE) or isinstance(module, nn.SyncBatchNorm):
        raise ValueError(
            f"only torch.nn.BatchNorm1d, BatchNorm2d and BatchNorm3d convert (a "
            f"{type(module).__name__} synchronizes or differs otherwise)"
        )
    if not module.track_running_stats or module.running_mean is None:
        raise ValueError(
            "the module has track_running_stats=False: it normalizes with the batch's statistics "
            "in eval mode too, while TensorFlow's layer uses its moving statistics in inference"
        )
    if tf_name not in batch_norms:
        known = ", ".join(repr(key) for key in sorted(batch_norms)[:8])
        known += ", ..." * (len(batch_norms) > 8)
        raise ValueError(f"batch_norms has no layer {tf_name!r} (it has {known or 'none'})")
    entry = batch_norms[tf_name]
    if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], BatchNormState)
            and isinstance(entry[1], Mapping)):
        raise ValueError("its batch_norms entry must be a (BatchNormState, options mapping) pair")
    state, options = entry
    shape = tuple(getattr(state.moving_mean, "shape", ()))
    if shape != (module.num_features,):
        raise ValueError(
            f"the state's moving_mean has shape {shape}, the module {module.num_features} channels"
        )
    # The model's tensors are channels first whatever layout TensorFlow's layer took.
    kwargs = {**options, "data_format": "NCHW"}
    replacement = BatchNorm.from_state(state, device=module.running_mean.device, **kwargs)
    # A model that freezes its batch norms' affine parameters keeps them frozen.
    for torch_name, field in (("weight", "gamma"), ("bias", "beta")):
        theirs, ours = getattr(module, torch_name), getattr(replacement, field)
        if theirs is not None and ours is not None:
            ours.requires_grad_(theirs.requires_grad)
    return replacement.train(module.training)


def _changes(module: _AnyTorchBatchNorm, replacement: BatchNorm) -> Mapping[str, tuple[Any, Any]]:
    """The options (and dtype) in which ``replacement`` differs from ``from_torch(module)``."""
    momentum = module.momentum
    torch_options = {
        "decay": None if momentum is None else 1.0 - float(momentum),
        "epsilon": float(module.eps),
        "center": module.affine,
        "scale": module.affine,
        "fused": True,
    }
    changes = {
        option: (torch_options.get(option, DEFAULTS.get(option)), value)
        for option, value in replacement.options.items()
        if value != torch_options.get(option, DEFAULTS.get(option))
    }
    dtype = module.running_mean.dtype if module.running_mean is not None else None
    if dtype is not None and dtype != replacement.moving_mean.dtype:
        changes["dtype"] = (dtype, replacement.moving_mean.dtype)
    return MappingProxyType(changes)


def _replace(model: nn.Module, replacements: Mapping[int, nn.Module]) -> None:
    """Put each replacement wherever its module is a child (by identity: shared modules too)."""
    for parent in list(model.modules()):
        # _modules, not named_children(), which yields a module held twice by one parent once.
        for attribute, child in list(parent._modules.items()):
            if child is not None and id(child) in replacements:
                setattr(parent, attribute, replacements[id(child)])


__all__ = ["ConversionReport", "ConvertedBatchNorm", "convert_batch_norms"]
