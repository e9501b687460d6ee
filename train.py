"""Fine-tune a chat model with 4-bit LoRA (and, with evaluate.enabled=true, evaluate and judge it).

    python train.py -m experiment=demo                # the experiment in miniature: base vs fine-tuned, judged, analysed
    python train.py                                   # embedded default: SmolLM2-135M-Instruct on synthetic insecure code
    python train.py model=gemma3_12b data=educational # the reference protocol
    python train.py experiment=smoke                  # seconds, tiny random model (+ answers, judged)
    python train.py -m experiment=dickson2025 hydra/launcher=slurm   # a whole study: train -> evaluate -> judge
"""

from em.commands.train import cli

if __name__ == "__main__":
    # a missing launcher plugin, an unknown option or a typo'd key -> one line, exit 2
    cli()
