"""Step-resolved training dynamics and mitigations (issue 23).

* :mod:`em.dynamics.snapshots` -- ``trainer.snapshot_every_n_steps``: the adapter every N optimizer steps,
  ``snapshots/step_<n>/``;
* :mod:`em.dynamics.geometry` -- LoRA geometry over those snapshots (norms, consecutive cosines, PCA
  trajectory) -> ``lora_geometry.csv``, and change points on its series -> ``lora_changepoints.json``;
* :mod:`em.dynamics.early_stop` -- early stopping on a training-loss plateau or a proxy threshold;
* :mod:`em.dynamics.kl` -- ``trainer.kl``: KL(base || adapted) on a side batch, base logits from peft's
  ``disable_adapter()``;
* :mod:`em.dynamics.ablation` -- ``trainer.ablate_direction``: CAFT, a direction projected out of the
  residual stream during training;
* :mod:`em.dynamics.figure` -- the dynamics figure (rates per step, geometry, change point).

Light at import: each submodule imports torch only where it needs it.
"""
