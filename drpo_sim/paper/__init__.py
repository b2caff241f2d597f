"""The pipeline that reproduces the papers: specs -> jobs -> result files -> claims -> report.

* :mod:`~drpo_sim.paper.specs`: typed experiment specifications and the shared conditions;
* :mod:`~drpo_sim.paper.analyses`: one module per figure group, each declaring its spec once;
* :mod:`~drpo_sim.paper.jobs`: run a spec (through :mod:`drpo_sim.run`), write its tables, draw it;
* :mod:`~drpo_sim.paper.manifest`: ``MANIFEST.json``, what made each figure;
* :mod:`~drpo_sim.paper.claims`: the twelve claims, each a test with numbers and a verdict;
* :mod:`~drpo_sim.paper.numbers`: the check that no number in a report is typed by hand;
* :mod:`~drpo_sim.paper.report`: the generated report ``paper/README.md``;
* :mod:`~drpo_sim.paper.reproduce`: ``drpo-sim reproduce``, all of the above in order.

It computes nothing itself: the math, the worlds, the statistics and the running live below it,
the plotting beside it (:mod:`drpo_sim.plots`).
"""
