"""The interpretability stage (``python interp.py`` / ``em interp``): residual activations of judged answers,
misalignment / persona directions, steering and directional ablation as evaluation conditions, projections.

Modules: :mod:`~em.interp.hooks` (decoder layers of any model; add / project-out / record context managers),
:mod:`~em.interp.collect` (pooled residuals streamed to safetensors shards + a parquet index),
:mod:`~em.interp.direction` (per-layer mean differences, held-out AUC, split-half stability, random control),
:mod:`~em.interp.intervene` (steer / ablate conditions through em's sampler, judge and analysis),
:mod:`~em.interp.project` (projection shifts with intervals, training-example ranking),
:mod:`~em.interp.run` (the stage's entry). docs/interp.md explains each step.
"""
