"""kmodlab: out-of-tree Linux kernel modules from source to running, verified state."""

__version__ = "0.1.0"
