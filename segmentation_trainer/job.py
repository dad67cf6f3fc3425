"""``train`` in the image: the job read through the SageMaker training toolkit, then one of two modes.

- no program named: the built-in-compatible algorithm (:func:`segmentation_trainer.train.run_training`);
- ``sagemaker_program`` / ``SAGEMAKER_PROGRAM`` names a script: the user's script
  (:func:`segmentation_trainer.script_mode.run_user_script`).
"""

from __future__ import annotations

import logging

from segmentation_trainer.contract import ContractError, TrainingPaths, missing_contract, write_failure

log = logging.getLogger(__name__)


def run_job(paths: TrainingPaths | None = None) -> int:
    """Run the training job under ``paths`` (default: SAGEMAKER_BASE_DIR or /opt/ml); returns the exit status."""
    paths = paths or TrainingPaths.resolve()
    missing = missing_contract(paths)
    if missing is not None:  # not a job directory (a typo?): say so, create nothing
        log.error("ClientError: %s", missing)
        if paths.output_dir.is_dir():
            write_failure(paths, f"ClientError: {missing}")
        return 2
    from segmentation_trainer.toolkit import read_job

    try:
        job = read_job(paths)
    except (ContractError, OSError, ValueError, KeyError, TypeError) as exc:
        message = f"ClientError: {' '.join(str(exc).split()) or type(exc).__name__}"
        log.error("%s", message)
        write_failure(paths, message)
        return 2
    if job.program:
        from segmentation_trainer.script_mode import run_user_script

        log.info("sagemaker_program=%s: running the user's script (script mode)", job.program)
        return run_user_script(job)
    from segmentation_trainer.train import run_training

    return run_training(paths, job=job)
