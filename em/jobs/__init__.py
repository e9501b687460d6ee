"""Jobs: one job's pipeline (:mod:`em.jobs.run`), sweeps, chains, job records and locks."""
