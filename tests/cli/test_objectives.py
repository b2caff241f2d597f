"""``drpo-sim list`` (:mod:`drpo_sim.cli.objectives`): every registered objective with its formula."""

from drpo_sim import cli, objectives


def test_list_shows_every_objective(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("pg_is", "ppo", "grpo", "cispo", "spo", "dppo_tv", "dppo_kl", "drpo", "mask_drpo"):
        assert f"{name}(" in out


def test_list_shows_each_objectives_formula_lines(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in objectives.available():
        obj = objectives.get(name)
        f = obj.formula
        assert f.surrogate and f.weight and f.idea and f.source, name
        block = f"{obj}\n    J = {f.surrogate}\n    w = {f.weight}\n    {f.idea}; {f.source}\n"
        assert block in out, name
    assert out.count("\n    J = ") == len(objectives.available())


def test_list_shows_every_correction_with_its_formula(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in objectives.corrections():
        corr = objectives.get("grpo", correction=name).correction
        assert f"{corr} [{corr.level}]\n    {corr.formula}\n    {corr.source}\n" in out, name
