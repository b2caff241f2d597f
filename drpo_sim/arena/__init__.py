"""The arena: RL where the training-inference mismatch comes from the policy itself.

The engine that samples rollouts is a second numerical pass, in bf16, fp16 or fp8, over the very
parameters the float32 trainer updates, so ``pi - mu`` is a function of where training takes the
parameters, as in a real run, and not an injected noise. Responses are 64 tokens whose right
answers depend on the prefix; every (objective, seed) run is one slice of a batch of models
evaluated together, so thousands of steps for many objectives fit on two cores.

Modules, in the order the data flows:

* :mod:`~drpo_sim.arena.task`: the walk through residue classes, its long-tailed demonstrations
  and its checked reward;
* :mod:`~drpo_sim.arena.model`: the batched transformer (dense or top-1 MoE), the trainer's
  float32 pass and the engine's reduced-precision pass with its KV cache;
* :mod:`~drpo_sim.arena.pretrain`: the base model every run starts from;
* :mod:`~drpo_sim.arena.calibration`: the knobs, fixed from statistics at initialisation only;
* :mod:`~drpo_sim.arena.train`: the RL loop over all runs at once, one row per run and step.

The experiments (DPPO's sanity test and its controls) are :mod:`drpo_sim.paper.analyses.arena`;
their cells are kind ``arena`` of :mod:`drpo_sim.run.cells`.
"""
