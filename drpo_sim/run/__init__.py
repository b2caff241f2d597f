"""Running experiments: cells, the cell store, the one executor, and the drivers built on them.

* :mod:`~drpo_sim.run.cells`: the unit of work (a ``sim`` or ``lab`` cell) and its id, a hash of
  what determines its numbers, the code included;
* :mod:`~drpo_sim.run.store`: the content-addressed, resumable store of finished cells;
* :mod:`~drpo_sim.run.executor`: :class:`~drpo_sim.run.executor.Runner`, local processes or Dask;
* :mod:`~drpo_sim.run.sweep`: sweep files (grids of simulations) and ``drpo-sim sweep``;
* :mod:`~drpo_sim.run.lab`: the tiny transformer lab's comparison (``drpo-sim lm compare``).
"""
