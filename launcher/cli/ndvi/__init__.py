"""The planetary NDVI job's commands, one module a stage of the run:

    search.py    search             find the scenes, one per MGRS tile
    plan.py      plan, upload       shard them into ManifestFile jobs; upload a run planned with --no-upload
    submit.py    submit             create the Processing jobs
    status.py    status, watch      follow the run
    resume.py    resume             a new round for what is missing (stage 1, then stage 2)
    local.py     local              run the jobs on this machine
    products.py  composite, mosaic  stage 2
    jobs.py      -                  what the commands that send or run jobs share: submission settings, secrets,
                                    sending the requests, running them here

Thin: arguments -> config objects -> `launcher.ndvi` (the pure core: search, plan, requests, products, watch; its I/O
edges: store, submit, status, local_run) -> printed results. Heavy modules (boto3, pystac-client, sagemaker)
are imported inside the commands.
"""

from __future__ import annotations

from launcher.cli.ndvi import local, plan, products, resume, search, status, submit

COMMANDS = (
    search.search,
    plan.plan,
    plan.upload,
    submit.submit,
    status.status,
    status.watch,
    resume.resume,
    local.local,
    products.composite,
    products.mosaic,
)
