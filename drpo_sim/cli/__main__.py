"""``python -m drpo_sim.cli``: the ``drpo-sim`` command line."""

from drpo_sim.cli import main

raise SystemExit(main())
