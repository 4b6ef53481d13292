"""The ``pooly`` command line (``pooly demo``, ``pooly chaos``), apart from the library.

Imports go one way, left to right and down; each module below ~500 lines::

    main ---> demo ---> demo_tally ---> demo_workload ---> demo_config
      |         \\                          |
      |          '---------> common  <-------------------------.   option types, display,
      '-----> chaos ---> chaos_soak ---> chaos_faults ---> chaos_exec ---> chaos_calls
                 \\          |                                                |
                  '--> chaos_report, chaos_proc     chaos_state, chaos_config, workers

    chaos_soak.Chaos(ChaosFaults(ChaosExec(ChaosCalls(ChaosState)))): one soak, one layer
    per role (state and counting; consumers; executors and their feeders; faults; watchers
    and the run).

``workers`` holds the worker classes and the poison objects: worker processes import it
(the forkserver preloads it), so it imports nothing of the CLI. The library never imports
this package (only ``python -m pooly`` does), and the CLI uses pooly's public API like any
program would. The ``pooly`` console script is :func:`pooly.cli.main.main`.
"""

# Deliberately empty: worker processes import pooly.cli.workers, and importing a submodule
# runs this file first -- it must not drag the rest of the CLI into every worker.
