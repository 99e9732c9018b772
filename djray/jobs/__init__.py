"""Ray job entrypoints: `python -m djray.jobs.govern CONFIG` and `python -m djray.jobs.train CONFIG`.

They run the same code as the command line, exit codes included (0 completed, 2 configuration error before any work,
1 failed: re-run to resume). `djray submit` uses them; `jobs/*.py` in the repository call them for `ray job submit
--working-dir .`.
"""
