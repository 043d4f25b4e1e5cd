"""transfer-bench: a reproducible benchmark harness for transfer learning on images."""

__version__ = "0.1.0"
