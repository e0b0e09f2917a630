"""Hot path: the Numba kernels that run over record arrays (each with a slow reference)."""
