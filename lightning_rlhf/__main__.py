"""``python -m lightning_rlhf {fit,validate,test,predict,demo,compare,plot}``: ``demo`` runs
:mod:`lightning_rlhf.demo`, ``compare`` :mod:`lightning_rlhf.compare` (multi-seed studies),
``plot`` :mod:`lightning_rlhf.plot` (training curves of a run), the rest
:func:`lightning_rlhf.cli.main` (they build on the CLI, so the CLI itself knows none of them)."""

from __future__ import annotations

import sys

from lightning_rlhf.cli import main as cli_main
from lightning_rlhf.cli import one_line_errors


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m lightning_rlhf`` and the ``lightning-rlhf`` script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "demo":
        from lightning_rlhf.demo import main as demo_main

        with one_line_errors():
            demo_main(args[1:])
    elif args and args[0] == "plot":
        from lightning_rlhf.plot import main as plot_main

        with one_line_errors():
            plot_main(args[1:])
    elif args and args[0] == "compare":
        from lightning_rlhf.compare import main as compare_main

        with one_line_errors():
            compare_main(args[1:])
    else:
        cli_main(argv)


if __name__ == "__main__":
    main()
