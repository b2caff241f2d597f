"""Reference solutions (and one wrong answer each) for the exercises of ``tutorials/*.ipynb``.

Keyed by notebook (file stem) and exercise name. ``tests/test_tutorials.py`` replaces the
exercise cell's placeholder line, :data:`PLACEHOLDER`, with ``solution`` (the check cell must then
print ``correct: ...``) or with ``wrong`` (the check must raise ``AssertionError``). Each snippet
runs in the notebook's kernel, after the cells above it, so it may use their variables (``t``,
``df``, ``switch_point``, the replay's output files, ...), as a student would.
"""

PLACEHOLDER = "answer = None  # your answer"

SOLUTIONS: dict[str, dict[str, dict[str, str]]] = {
    "01_policy_gradient_and_importance_sampling": {
        "01.is_gradient": {
            "solution": 'answer = float(objectives.get("pg_is").grad_logp(np.log(t["pi"]), np.log(t["mu"]), '
                        't["advantage"]))',
            "wrong": 'answer = t["advantage"] * t["mu"] / t["pi"]',
        },
        "01.ratio_variance": {
            "solution": "mu_ex, r_ex = np.exp(logmu_ex), np.exp(logpi_ex - logmu_ex)\n"
                        "answer = float(np.sum(mu_ex * r_ex**2) - np.sum(mu_ex * r_ex) ** 2)",
            "wrong": "answer = float(np.sum(np.exp(logmu_ex) * np.exp(logpi_ex - logmu_ex) ** 2))",
        },
    },
    "02_ppo_grpo_ratio_clipping": {
        "02.rare_token_clip": {
            "solution": 'g = objectives.get(t["objective"])\n'
                        'answer = t["mu"] * (1 + g.eps_high) - t["mu"]',
            "wrong": 'answer = objectives.get(t["objective"]).eps_high',
        },
        "02.frequent_token": {
            "solution": 'answer = float(objectives.get(t["objective"]).weight(np.log(t["pi"]), np.log(t["mu"]), '
                        't["advantage"]))',
            "wrong": "answer = 0.0",
        },
    },
    "03_dppo_divergence_trust_region": {
        "03.tv_boundary": {
            "solution": 'tv_ex = objectives.get("dppo_tv", delta=t["delta"])\n'
                        'answer = switch_point(lambda p: tv_ex.weight(np.log(p), np.log(t["mu"]), t["advantage"]) != '
                        '0, t["mu"], 1e-12)',
            "wrong": 'answer = t["mu"] * (1 - objectives.get("grpo").eps_low)',
        },
        "03.kl_boundary_rare": {
            "solution": 'answer = brentq(lambda p: float(objectives.binary_kl(np.log(t["mu"]), np.log(p))) - '
                        't["delta"], '
                        't["mu"], 1 - 1e-12)',
            "wrong": 'answer = t["mu"] + 0.15',
        },
    },
    "04_spo_drpo_bounded_weights": {
        "04.spo_rare_weight": {
            "solution": 'spo_ex = objectives.get(t["objective"], **t["objective_params"])\n'
                        'answer = float(spo_ex.weight(np.log(t["pi"]), np.log(t["mu"]), t["advantage"]))',
            "wrong": 'answer = float(objectives.get("drpo", delta=t["objective_params"]["eps"])'
                     '.weight(np.log(t["pi"]), np.log(t["mu"]), t["advantage"]))',
        },
        "04.drpo_bounds": {
            "solution": 'drpo_ex = objectives.get("drpo", delta=t["delta"])\n'
                        "g = np.linspace(1e-4, 1 - 1e-4, 801)\n"
                        "mu_g, pi_g = np.meshgrid(g, g)\n"
                        "w = np.concatenate([drpo_ex.weight(np.log(pi_g), np.log(mu_g), s).ravel() for s in (1.0, "
                        "-1.0)])\n"
                        "answer = (float(w.min()), float(w.max()))",
            "wrong": "answer = (0.0, 2.0)",
        },
    },
    "05_noise_staleness_convergence": {
        "05.collapse_step": {
            "solution": 'collapsed_spo = df[(df["method"] == "spo") & df["collapsed"]]\n'
                        'answer = float(collapsed_spo.groupby("seed")["step"].min().median())',
            "wrong": "answer = 100.0",
        },
        "05.best_method": {
            "solution": "summary_all = stats.summarize_runs(df, n_resamples=200)\n"
                        'answer = summary_all.loc[summary_all["final_iqm"].idxmax(), "method"]',
            "wrong": 'answer = "pg_is"',
        },
    },
    "06_reading_a_token_log": {
        "06.rare_share": {
            "solution": 'answer = json.loads(Path("replay/replay.json").read_text())["rare_share"]',
            "wrong": "answer = 0.078",
        },
        "06.grpo_rare_masked": {
            "solution": 'answer = float(pd.read_csv("replay/objectives.csv").set_index("objective").loc["grpo", '
                        '"rare_masked_frac"])',
            "wrong": 'answer = float(pd.read_csv("replay/objectives.csv").set_index("objective").loc["grpo", '
                     '"masked_frac"])',
        },
    },
}
