"""em's Hydra config root (a package so that ``pkg://em.conf`` and package data find it once installed)."""
