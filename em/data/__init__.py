"""The data layer: ``cfg.data`` -> a list of chat conversations ready for tokenization.

Entry: :mod:`em.data.run`."""
