from ndvi_worker.cli import main

main(prog_name="python -m ndvi_worker")
