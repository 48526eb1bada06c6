#!/usr/bin/env python3
"""The Ollama simulator, kept at its old path: it now lives in :mod:`modelmanager.simulator`.

``python3 tools/fake_ollama.py --port 11434`` runs it as before (the same as
``python3 -m modelmanager.simulator``), and ``from tools.fake_ollama import FakeOllama``
(and the other names below) keeps working. New code should import the package.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from modelmanager.simulator import (
    CATALOG,
    CUDA_CONTEXT_BYTES,
    ERR_LOAD_OOM,
    ERR_MIDSTREAM_OOM,
    ERR_QUEUE_FULL,
    ERR_RUNNER_STOPPED,
    GB,
    MIB,
    VERSION,
    FakeOllama,
    ModelSpec,
    RunnerOptions,
    canonical_name,
    embed_seconds,
    find_spec,
    generate_seconds,
    load_seconds,
    main,
    parse_go_duration,
    parse_keep_alive,
)
from modelmanager.simulator.cli import _parse_args
from modelmanager.simulator.http import Handler as _Handler

__all__ = [
    "CATALOG",
    "CUDA_CONTEXT_BYTES",
    "ERR_LOAD_OOM",
    "ERR_MIDSTREAM_OOM",
    "ERR_QUEUE_FULL",
    "ERR_RUNNER_STOPPED",
    "GB",
    "MIB",
    "VERSION",
    "FakeOllama",
    "ModelSpec",
    "RunnerOptions",
    "_Handler",
    "_parse_args",
    "canonical_name",
    "embed_seconds",
    "find_spec",
    "generate_seconds",
    "load_seconds",
    "main",
    "parse_go_duration",
    "parse_keep_alive",
]

if __name__ == "__main__":
    sys.exit(main())
