"""``make bench-peers`` (issue 13): pooly beside the pools users would pick instead.

Layout (bench/bench_peers.py puts ``bench/`` on ``sys.path`` and runs :mod:`peers.driver`):

- :mod:`peers.driver`: options (``--quick``, ``--peers``, ``--only``, ``--out``,
  ``--workers``), the workload modules in turn, the outputs (``peers.md``, ``peers.json``,
  ``headline.md``, the PNGs);
- :mod:`peers.report`: the ``Section``/``Plot`` schema every workload returns (see its
  docstring) and their Markdown; standard library only;
- :mod:`peers.plots`: ``draw(plot, out_dir)``, any plot dict to a PNG (matplotlib, Agg);
- :mod:`peers.adapters`: one adapter per peer id (``pooly-executor``, ``pooly-lease``,
  ``stdlib``, ``mp-pool``, ``pebble``, ``loky``, ``mpire``, ``deadpool``, ``ray``);
- :mod:`peers.tasks`: what the workers run (importable in every child);
- :mod:`peers.speed`: throughput, latency, CPU scaling, memory, concurrent callers;
- ``peers.faults`` and ``peers.embed`` (when present): the fault workloads and the
  embedding model.

A workload module exposes ``run(opts) -> list[Section]``; ``opts`` is an
``argparse.Namespace`` with at least ``quick`` (bool), ``peers`` (list of peer ids),
``workers`` (int, default 2) and ``only`` (list of section ids, or None for all). The driver
calls each in turn; an ``ImportError`` of the module itself skips it, any other exception
is printed and recorded as a section saying so, and the run goes on.
"""
