"""The evaluation stage: question sets and formats, answer generation with a resumable store, judging,
the responses table and summary. ``em.evaluate.run.run_evaluation`` is what evaluate.py calls."""
