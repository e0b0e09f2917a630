"""Shared memory between processes: segments, rings, the control block and the boards."""
