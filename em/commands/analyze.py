"""``em analyze`` / ``python analyze.py``: rates with CIs, contrasts, correlations, figures and a report.

The Hydra app lives here, in the package, so its config is found as ``pkg://em.conf`` from any directory.
"""

import sys

import hydra
from omegaconf import DictConfig

import em.config  # noqa: F401  registers the structured-config schemas (analyze_schema among them)
from em.config.compose import check_args
from em.commands import run_main


@hydra.main(version_base="1.3", config_path="pkg://em.conf", config_name="analyze")
def main(cfg: DictConfig) -> None:
    """Run the analysis of the composed config; bad input prints one line (exit 2)."""
    from em.quiet import configure

    configure(quiet=bool(cfg.get("quiet")), verbose=bool(cfg.get("verbose")), progress=cfg.get("progress", True))
    from em.train.stopping import handle_signals, resume_line

    try:
        with handle_signals():  # SIGTERM / SIGINT: one line, exit 128 + signal; every file written is whole
            run_main(_locked, cfg)
    except KeyboardInterrupt as e:
        from em.runtime import in_multirun

        name = getattr(e, "signal_name", "SIGINT")
        print(f"interrupted ({name}) in analyze: {cfg.get('run_dir')} holds only whole files (each output is "
              f"written atomically; the rest is not written); rerun: "
              f"{resume_line(None, in_multirun(), note='every analysis runs again').removeprefix('resume: ')}",
              file=sys.stderr, flush=True)
        sys.exit(getattr(e, "exit_code", 130))


def _locked(cfg: DictConfig):
    """``run_analysis`` holding the run directory's lock: a second analysis into the same directory at once is
    refused in one line (exit 2) instead of mixing its tables with the first one's."""
    from em.analysis.run import run_analysis
    from em.jobs.locks import DirLock

    with DirLock(cfg.run_dir, "analysis"):
        return run_analysis(cfg)


def cli() -> None:
    """Check the command line (one line, exit 2 on a bad option or key), then run the Hydra app."""
    from em.quiet import early

    early(sys.argv[1:])  # warning filters; no tqdm bars into a file
    run_main(lambda argv: check_args("analyze", argv), sys.argv[1:])
    main()
