"""nbdev's per-notebook docs driver, with the cells flagged `gpu`/`slow` (pyproject's tst_flags) never executed.

To collect `show_doc` entries nbdev runs every exported cell and every cell with an import in it; a `#| gpu` cell
that imports would then run on a machine without a GPU and fail the build. Such cells keep their stored outputs.
A module of its own (not docs_prep.py, which runs as __main__) so that nbdev's spawned workers can import it."""
import sys
from pathlib import Path


def serve_without_flagged_cells(*args, **kwargs):
    "Patch nbdev's cell filter in this (worker) process once, then run nbdev's driver."
    import nbdev.processors as P
    from nbdev.serve_drv import main as nbdev_main
    if not getattr(P, "_flagged_cells_skipped", False):
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from nbval_prep import should_skip, skip_flags
        flags, do_eval = skip_flags(), P._do_eval
        P._do_eval = lambda cell: None if should_skip(cell.source, flags) else do_eval(cell)
        P._flagged_cells_skipped = True
    return nbdev_main(*args, **kwargs)
