"""em: emergent-misalignment experiments (4-bit LoRA fine-tuning, judged evaluation, analysis)."""
