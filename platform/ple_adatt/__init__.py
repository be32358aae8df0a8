"""ple-adatt: train, tune and study PLE + adaTT multi-task customer models on Ray."""
__version__ = "0.1.0"
