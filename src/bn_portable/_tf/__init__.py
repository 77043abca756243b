"""TensorFlow's layer semantics: options, plan, state, the four paths and their updates."""
