"""Models: the SDEs, samplers, the SDEdit procedure and checkpoint loading (pure torch)."""
