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
        "02.cispo_gradient": {
            "solution": 'cispo_ex = objectives.get(t["objective"])\n'
                        'g = cispo_ex.grad_logp(np.log(t["pi"]), np.log(t["mu"]), np.array(t["advantage"]))\n'
                        "answer = (float(g[0]), float(g[1]))",
            "wrong": "answer = (0.0, 0.0)",
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
        "03.grpo_wider": {
            "solution": 'grpo_ex = objectives.get("grpo", eps_high=t["eps_high"])\n'
                        'tv_ex = objectives.get("dppo_tv", delta=t["delta"])\n'
                        "def gain_ex(obj, m):\n"
                        '    keep = lambda p: obj.weight(np.log(p), np.log(m), t["advantage"]) != 0\n'
                        "    return float(np.where(keep(1.0), 1.0, switch_point(keep, m, 1.0))) - m\n"
                        "answer = brentq(lambda m: gain_ex(grpo_ex, m) - gain_ex(tv_ex, m), 0.01, 0.75)",
            "wrong": 'answer = t["delta"]',
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
        "04.drpo_surrogate_torch": {
            "solution": "r_ex = torch.exp(logp - logp_behavior)\n"
                        "J = r_ex * adv - adv.abs() * torch.exp(logp_behavior) * (r_ex - 1) ** 2 / (2 * delta)\n"
                        "J.sum().backward()\n"
                        'answer = (logp.grad[t["report"][0]], logp.grad[t["report"][1]])',
            # SPO's penalty: the factor mu left out
            "wrong": "r_ex = torch.exp(logp - logp_behavior)\n"
                     "J = r_ex * adv - adv.abs() * (r_ex - 1) ** 2 / (2 * delta)\n"
                     "J.sum().backward()\n"
                     'answer = (logp.grad[t["report"][0]], logp.grad[t["report"][1]])',
        },
    },
    "05_noise_staleness_convergence": {
        "05.grpo_lowest_cell": {
            "solution": 'grpo_last = runs[(runs["method"] == "grpo") & (runs["step"] == runs["step"].max())]\n'
                        'answer = grpo_last.groupby("cell")["expected_reward"].mean().idxmin()',
            "wrong": 'answer = "staleness"',
        },
        "05.spo_outcomes": {
            "solution": 'rule_ex = stats.CollapseRule(**design["collapse"])\n'
                        'seeds_ex = summaries.seed_table(runs.drop(columns="collapsed"), ["method", "cell"], '
                        'rule=rule_ex)\n'
                        'spo_ex = seeds_ex[seeds_ex["method"] == "spo"]\n'
                        'answer = (int(spo_ex["collapsed"].sum()), int((spo_ex["peak"] < rule_ex.min_peak).sum()))',
            "wrong": 'spo_runs = runs[runs["method"] == "spo"]\n'
                     'answer = (int(spo_runs.groupby(["cell", "seed"])["collapsed"].any().sum()), 0)',
        },
        "05.drpo_equivalent_cells": {
            "solution": 'p_ex = [compare.equivalence_test(finals.loc[("drpo", c)], finals.loc[("pg_is", c)], '
                        'margin=design["margin"], alpha=design["alpha"]).p_value for c in cells]\n'
                        'answer = float((compare.holm(p_ex) < design["alpha"]).sum())',
            "wrong": "answer = 0.0",
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
        "06.largest_corrective_delta": {
            "solution": "log_ex = tokens.load_token_log(log_path).to_pandas()\n"
                        'log_ex = log_ex[log_ex["mask"] & (log_ex["advantage"] < 0)]\n'
                        'shift_ex = np.exp(log_ex["logp"]) - np.exp(log_ex["logp_behavior"])\n'
                        'answer = float((np.sign(log_ex["advantage"]) * shift_ex).max())',
            "wrong": 'answer = totals["abs_shift_max"]',
        },
    },
    "07_three_policies_and_sequence_ratios": {
        "07.decoupled_weight": {
            "solution": 'mu_ex, old_ex, pi_ex, a_ex = (np.array(t[k]) for k in ("mu", "pi_old", "pi", "advantage"))\n'
                        "rho_ex, b_ex = pi_ex / old_ex, old_ex / mu_ex\n"
                        'p_ex = t["objective_params"]\n'
                        'clipped = ((a_ex > 0) & (rho_ex > 1 + p_ex["eps_high"])) | ((a_ex < 0) & (rho_ex < 1 - '
                        'p_ex["eps_low"]))\n'
                        'w_ex = np.where(clipped, 0.0, np.minimum(b_ex, p_ex["is_cap"]) / b_ex)\n'
                        "answer = (float(w_ex[0]), float(w_ex[1]))",
            "wrong": "answer = (0.0, 0.0)",
        },
        "07.anchor_agreement": {
            "solution": 'grpo_ex = objectives.get(t["objective"])\n'
                        'tis_ex = objectives.get(t["objective"], correction=t["correction"], cap=t["cap"])\n'
                        "gaps = np.geomspace(0.1, 10.0, 400_001)\n"
                        'lp_ex, lpo_ex = np.log(t["rho"] * t["pi_old"]), np.log(t["pi_old"])\n'
                        'lpb_ex = np.log(t["pi_old"] / gaps)\n'
                        'w_rollout = grpo_ex.weight(lp_ex, lpb_ex, t["advantage"])\n'
                        'w_recompute = tis_ex.weight(lp_ex, lpb_ex, t["advantage"], logp_old=lpo_ex)\n'
                        "agree = np.isclose(w_rollout, w_recompute, rtol=1e-12)\n"
                        "answer = (float(gaps[agree].min()), float(gaps[agree].max()))",
            "wrong": "answer = (0.8, 2.0)",
        },
        "07.product_variance": {
            "solution": "e_r2_ex = float(np.sum(np.exp(logmu_v) * np.exp(logpi_v - logmu_v) ** 2))\n"
                        'answer = e_r2_ex ** t["length"] - 1',
            "wrong": "e_r2_ex = float(np.sum(np.exp(logmu_v) * np.exp(logpi_v - logmu_v) ** 2))\n"
                     'answer = t["length"] * (e_r2_ex - 1)',
        },
    },    "08_loss_aggregation_and_length_bias": {
        "08.longest_favoured": {
            "solution": 'world_ex = FormatWorld(**t["world"])\n'
                        "qualifying = []\n"
                        "for n in range(1, world_ex.horizon + 1):\n"
                        '    lengths_n = list(world_ex.lengths); lengths_n[t["careful"]] = n\n'
                        "    w_n = dataclasses.replace(world_ex, lengths=tuple(lengths_n))\n"
                        '    g_n = w_n.expected_gradient(np.zeros(w_n.k), t["mode"])\n'
                        '    if g_n[t["careful"]] >= g_n[t["short"]]:\n'
                        "        qualifying.append(n)\n"
                        "answer = max(qualifying)",
            "wrong": "answer = 8",
        },
        "08.silent_bug": {
            "solution": "import torch\n"
                        "def grad_of(loss_fn):\n"
                        "    b = tutorials.bug_batch()\n"
                        '    loss_fn(b["logits"], b).backward()\n'
                        '    return b["logits"].grad\n'
                        "def registry_loss(logits, b):\n"
                        "    with torch.no_grad():\n"
                        '        mu_ex = tutorials.engine_logp(logits, b["tokens"])\n'
                        '    lp_ex = tutorials.trainer_logp(logits, b["tokens"])\n'
                        '    value, _ = objectives.policy_loss(t["objective"], lp_ex, mu_ex, b["advantage"],\n'
                        '                                      b["mask"], agg_mode=t["agg_mode"])\n'
                        "    return value\n"
                        "reference = grad_of(registry_loss)\n"
                        "answer = ''.join(k for k, f in tutorials.SUSPECTS.items()\n"
                        "                 if not torch.allclose(grad_of(f), reference))",
            "wrong": 'answer = "e"',
        },
    },
}
