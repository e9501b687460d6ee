"""Analyse judged responses: rates with CIs, contrasts, correlations, sensitivity, figures and a report.

    python analyze.py                                   # the latest run under outputs/evaluate/
    python analyze.py inputs=[outputs/evaluate/RUN,multirun/SWEEP,eval_result.csv] condition=insecure
    python analyze.py 'inputs=[{path: base.csv, condition: base},{path: results/, condition: insecure}]'
    python analyze.py inputs=[scored.jsonl] columns.condition=arm denominator=scored ci.method=clopper_pearson
    python analyze.py thresholds.coherent=60 logger=wandb
"""

from em.commands.analyze import cli

if __name__ == "__main__":
    # a missing launcher plugin, an unknown option or a typo'd key -> one line, exit 2
    cli()
