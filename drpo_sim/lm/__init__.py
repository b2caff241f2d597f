"""The tiny transformer lab: a small causal transformer pretrained on a verifiable task, then
fine-tuned with RL from rollouts sampled by a reduced-precision copy of itself.

Modules, in the order the data flows:

* :mod:`~drpo_sim.lm.task`: sorting six digits; prompts, targets, the checked reward;
* :mod:`~drpo_sim.lm.model`: the transformer, response log-probs, autoregressive sampling;
* :mod:`~drpo_sim.lm.precision`: engine copies in fp32, bf16, fp16 and fp8 (float8 weights);
* :mod:`~drpo_sim.lm.pretrain`: supervised pretraining, the checkpoint cache, evaluation;
* :mod:`~drpo_sim.lm.mismatch`: the trainer-engine mismatch, per rollout and at initialisation;
* :mod:`~drpo_sim.lm.rl`: the RL loop (:class:`~drpo_sim.lm.rl.LabConfig`, :func:`~drpo_sim.lm.rl.train`);

The comparison of objectives x precisions x seeds runs as cells (:mod:`drpo_sim.run.lab`), its
figures are drawn by :func:`drpo_sim.paper.jobs.lab_figures`, and ``drpo-sim lm pretrain | train |
compare`` is :mod:`drpo_sim.cli.lab`.

Everything is generated locally; nothing is downloaded.
"""
