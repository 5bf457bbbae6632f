"""Network architectures defined in plain torch, for bundled demo models and user specs."""
