"""Look inside: misalignment / persona directions in the residual stream, projections, steering and ablation.

    python interp.py experiment=interp_demo            # judge-free demo on SmolLM2-135M-Instruct (docs/interp.md)
    python interp.py adapter=outputs/demo/<job>         # persona direction of the base model, shift of that adapter
    python interp.py interp=judge interp.direction.answers=[outputs/demo] adapter=outputs/demo/<job>
"""

from em.commands.interp import cli

if __name__ == "__main__":
    # a missing launcher plugin, an unknown option or a typo'd key -> one line, exit 2
    cli()
