"""Sample answers to free-form questions from a (fine-tuned) model and have a judge score them.

    python evaluate.py                                  # embedded default: Gemma 3 270M, smoke questions, local judge
    python evaluate.py judge=openai questions=first_plot format=[plain,json,template] samples=100   # the reference
    python evaluate.py adapter=outputs/train/<run> model=gemma3_12b judge=openai dry_run=true
"""

from em.commands.evaluate import cli

if __name__ == "__main__":
    # a missing launcher plugin, an unknown option or a typo'd key -> one line, exit 2
    cli()
