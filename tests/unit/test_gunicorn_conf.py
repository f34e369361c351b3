"""gateway/gunicorn.conf.py's worker hook: what a worker loaded at start-up is taken out of the collector's way."""

from __future__ import annotations

import gc
import runpy
from pathlib import Path

CONF = Path(__file__).resolve().parents[2] / "gateway" / "gunicorn.conf.py"


def test_a_worker_freezes_what_it_loaded() -> None:
    hooks = runpy.run_path(str(CONF))
    gc.unfreeze()
    try:
        hooks["post_worker_init"](None)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
