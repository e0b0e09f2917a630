"""Hot path: the record dtype and the Numba kernels that run over record arrays."""
