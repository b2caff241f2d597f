"""drpo_sim's objectives inside the trainers people use (``docs/integrations.md``).

One module per trainer, each importing its trainer's package, which ``import drpo_sim`` never needs:

* :mod:`drpo_sim.integrations.trl`: :class:`~drpo_sim.integrations.trl.DrpoSimGRPOTrainer`, TRL's
  ``GRPOTrainer`` with its policy loss computed by :func:`drpo_sim.objectives.policy_loss` for an
  objective chosen by name, and a per-token dump that ``drpo-sim replay`` reads
  (``pip install 'drpo_sim[trl]'``).

Import the module itself (``from drpo_sim.integrations.trl import DrpoSimGRPOTrainer``): without its
trainer's package, that import fails with one line naming the extra to install.
"""

__all__: list[str] = []
