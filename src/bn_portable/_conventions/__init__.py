"""Other frameworks' batch norms on the shared kernels; ``bn_portable.conventions`` is their
public face (one module per framework, ``_common`` for what they share)."""
