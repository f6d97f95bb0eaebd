"""Run documentation code blocks as sessions: ``python docs_session.py BLOCKS.json RESULTS.json``.

BLOCKS.json maps a session name (one documentation file) to its Python blocks, in order:
``{"README.md": [{"id": "README.md:43", "code": "..."}, ...]}``. The blocks of one session share
one namespace, as when a reader pastes them one after another into a Python prompt; each session
starts from a fresh namespace. RESULTS.json gets, per session, ``null`` (every block ran) or the
failing block's id and traceback. Run in a subprocess by tests/test_docs_run.py.
"""
from __future__ import annotations

import json
import sys
import traceback


def run_session(blocks: list) -> object:
    namespace = {"__name__": "__main__"}
    for block in blocks:
        try:
            exec(compile(block["code"], block["id"], "exec"), namespace)
        except BaseException:  # noqa: BLE001 - report any failure of the block, including SystemExit
            return {"block": block["id"], "traceback": traceback.format_exc()}
    return None


def main() -> None:
    import torch

    torch.set_num_threads(1)
    with open(sys.argv[1]) as fh:
        sessions = json.load(fh)
    results = {name: run_session(blocks) for name, blocks in sessions.items()}
    with open(sys.argv[2], "w") as fh:
        json.dump(results, fh)


if __name__ == "__main__":
    main()
