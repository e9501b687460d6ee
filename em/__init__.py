"""em: emergent-misalignment experiments (4-bit LoRA fine-tuning, judged evaluation, analysis).

Importing ``em`` (before torch) makes idle OpenMP threads sleep instead of spin (``OMP_WAIT_POLICY=PASSIVE``,
unless set): on a CPU shared with other work, spinning intra-op threads made sampling up to 20x slower
(bench/generate_batched.py). Set ``OMP_WAIT_POLICY=ACTIVE`` to get the OpenMP default back.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
