"""em: emergent-misalignment experiments (4-bit LoRA fine-tuning, judged evaluation, analysis).

Importing ``em`` (before torch) makes idle OpenMP threads sleep instead of spin (``OMP_WAIT_POLICY=PASSIVE``,
unless set): on a CPU shared with other work, spinning intra-op threads made sampling up to 20x slower
(bench/generate_batched.py). Set ``OMP_WAIT_POLICY=ACTIVE`` to get the OpenMP default back.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# The Hydra config lives at the repository root (conf/); a wheel carries it inside the package as em.conf and an editable install
# maps em.conf to it. A checkout imported straight from its directory (pytest's pythonpath ".") has neither, so
# em.conf is bound to ../conf here: pkg://em.conf then resolves the same way in all three.
_here = os.path.dirname(os.path.abspath(__file__))
_conf = os.path.join(os.path.dirname(_here), "conf", "__init__.py")
if not os.path.isdir(os.path.join(_here, "conf")) and os.path.isfile(_conf):
    import importlib.util
    import sys

    if importlib.util.find_spec("em.conf") is None:
        _spec = importlib.util.spec_from_file_location("em.conf", _conf,
                                                       submodule_search_locations=[os.path.dirname(_conf)])
        conf = sys.modules["em.conf"] = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(conf)
