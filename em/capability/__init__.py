"""Capability stage: lm-eval benchmarks, base vs adapter; entry :mod:`em.capability.run`."""
