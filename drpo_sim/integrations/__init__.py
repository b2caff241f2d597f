"""drpo_sim's objectives inside the trainers people use (``docs/integrations.md``).

One module per trainer, each importing its trainer's package, which ``import drpo_sim`` never needs:

* :mod:`drpo_sim.integrations.trl`: :class:`~drpo_sim.integrations.trl.DrpoSimGRPOTrainer`, TRL's
  ``GRPOTrainer`` with its policy loss computed by :func:`drpo_sim.objectives.policy_loss` for an
  objective chosen by name, and a per-token dump that ``drpo-sim replay`` reads
  (``pip install 'drpo_sim[trl]'``).
* :mod:`drpo_sim.integrations.nemo_rl`: :class:`~drpo_sim.integrations.nemo_rl.DrpoSimLossFn`, a NeMo
  RL ``LossFunction`` (in place of ``ClippedPGLossFn``) whose policy loss is ``policy_loss``'s,
  normalised by NeMo RL's global token or sequence counts across micro-batches and data-parallel
  ranks. The exception to the rule above: it needs only torch, and imports without NeMo RL (whose
  PyPI package is a placeholder; no extra).
* :mod:`drpo_sim.integrations.verl`: each objective registered in verl's policy-loss registry as
  ``drpo_sim/<name>`` (``actor_rollout_ref.actor.policy_loss.loss_mode=drpo_sim/drpo``), with verl's
  signature and verl's own global aggregation (``agg_loss``) of drpo_sim's per-token surrogate
  (``pip install 'drpo_sim[verl]'``, in an environment of its own: verl 0.9 and the trl extra pin
  different transformers).

Import the module itself (``from drpo_sim.integrations.trl import DrpoSimGRPOTrainer``): without its
trainer's package, that import fails with one line naming the extra to install.
"""

__all__: list[str] = []
