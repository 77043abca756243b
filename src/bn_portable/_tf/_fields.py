"""The layer's variables by name: which exist for a configuration, and TensorFlow's names."""

from __future__ import annotations

#: Every field of ``BatchNormState``, in its order.
FIELDS = (
    "beta",
    "gamma",
    "moving_mean",
    "moving_variance",
    "moving_mean_biased",
    "local_step",
    "moving_stddev",
    "renorm_mean",
    "renorm_stddev",
    "skipped_steps",
)

#: The field that counts skipped steps (``skip_nonfinite=True``), and its dtype.
COUNTER = "skipped_steps"
COUNTER_DTYPE = "int32"

#: Fields holding one number for the whole layer, not one per channel.
SCALAR_FIELDS = ("local_step", COUNTER)

#: The parameters (trained by gradient); every other field is a statistic.
PARAMETERS = ("beta", "gamma")

#: Names accepted in ``param_initializers`` (TensorFlow's).
INITIALIZED_FIELDS = ("beta", "gamma", "moving_mean", "moving_variance")

#: TensorFlow's variable name (relative to the layer's scope) of each field it has.
TF_NAMES = {
    "beta": "beta",
    "gamma": "gamma",
    "moving_mean": "moving_mean",
    "moving_variance": "moving_variance",
    "moving_mean_biased": "moving_mean/biased",
    "local_step": "moving_mean/local_step",
    "moving_stddev": "moving_stddev",
    "renorm_mean": "renorm_mean",
    "renorm_stddev": "renorm_stddev",
}


def required_fields(
    *, center: bool, scale: bool, zero_debias: bool, renorm: bool, skip_nonfinite: bool = False
) -> tuple[str, ...]:
    """The fields a layer of this configuration has, in ``FIELDS`` order."""
    wanted = {"moving_mean", "moving_variance"}
    if center:
        wanted.add("beta")
    if scale:
        wanted.add("gamma")
    if zero_debias:
        wanted |= {"moving_mean_biased", "local_step"}
    if renorm:
        wanted |= {"moving_stddev", "renorm_mean", "renorm_stddev"}
    if skip_nonfinite:
        wanted.add(COUNTER)
    return tuple(field for field in FIELDS if field in wanted)
