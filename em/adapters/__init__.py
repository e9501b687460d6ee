"""Adapters: save / key layout / resolve / lineage / card / push; entry :mod:`em.adapters.run` (push to the Hub)."""
