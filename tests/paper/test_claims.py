"""The claim tests (drpo_sim.paper.claims): the geometric claims hold; claim 5 reads a replay table; the
others read the analyses' per-seed tables, with each rule made to flip; the verdict table."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from drpo_sim import analysis, stats
from drpo_sim.paper import claims
from drpo_sim.tokens import TokenBatch


def test_geometric_claims_are_supported_on_cpu():
    c1 = claims.claim_1(n_plane=200)
    c2 = claims.claim_2(vocab_sizes=(8, 4096), trials=5)
    c3 = claims.claim_3(n_plane=200)
    assert (c1.verdict, c2.verdict, c3.verdict) == ("supported",) * 3
    assert all(v <= 1 + 1e-12 for k, v in c1.numbers.items() if k.startswith("drpo_"))
    assert c1.numbers["spo_log_peak_vs_log_mu_slope"] == pytest.approx(-1.0, abs=0.05)
    assert c2.numbers["chi2_max_rel_error"] < 1e-9 and c2.numbers["l2_max_rel_error"] < 1e-9
    assert c3.numbers["delta12.5_corrective_fraction"] == 0.0 and c3.numbers["delta0.15_corrective_fraction"] > 0.3


def test_claim_1_fails_when_the_bound_is_wrong_on_cpu(monkeypatch):
    """The test can fail: scale DRPO's weight departure beyond 1/delta and the verdict flips."""
    real = claims.objectives.get

    class Loose:
        def __init__(self, obj):
            self.obj = obj

        def weight(self, *a):
            return 1 + 2 * (self.obj.weight(*a) - 1)

    monkeypatch.setattr(claims.objectives, "get",
                        lambda name, **kw: Loose(real(name, **kw)) if name == "drpo" else real(name, **kw))
    assert claims.claim_1(n_plane=100).verdict == "not supported"


def replay_regions(rare_clip: bool):
    """A replay of tokens where the ratio moves by 8% either way, on rare and on frequent tokens;
    with ``rare_clip`` the rare tokens move by 40% instead, past GRPO's clip."""
    rng = np.random.default_rng(0)
    n = 40000
    mu = np.where(np.arange(n) % 2 == 0, 10 ** rng.uniform(-4, -2.1, n), rng.uniform(0.2, 0.9, n))
    move = np.where(mu < 0.01, 0.4 if rare_clip else 0.08, 0.08)
    logp = np.log(mu) + rng.choice([-1, 1], n) * move
    adv = rng.choice([-1.0, 1.0], n)
    b = TokenBatch.from_arrays(logp=np.minimum(logp, 0), logp_behavior=np.log(mu), advantage=adv,
                               mask=np.ones(n, bool), sample_id=np.arange(n), group_id=np.arange(n),
                               position=np.zeros(n, int))
    return analysis.replay([b]).regions


def test_claim_5_verdicts_follow_the_log_on_cpu(tmp_path):
    supported = claims.claim_5(replay_regions(rare_clip=True))
    assert supported.verdict == "supported" and supported.numbers["grpo_masked_rare"] > 0.3
    assert supported.numbers["ratio_099_to_080"] == pytest.approx(0.80 / 0.99)
    quiet = claims.claim_5(replay_regions(rare_clip=False))
    assert quiet.verdict == "inconclusive" and quiet.numbers["grpo_masked_rare"] == 0.0
    path = claims.write_claims([supported, quiet], tmp_path / "claims.json")
    doc = json.loads(path.read_text())
    assert [d["number"] for d in doc] == [5, 5] and doc[0]["statement"].startswith("Ratio clipping")
    with pytest.raises(ValueError, match="verdict"):
        claims.ClaimResult(1, "maybe", "", {})


# ------------------------------------------------------------------------------------------------
# claims read off per-seed tables (drpo_sim.summaries.seed_table): synthetic tables where each rule flips

N_SEEDS = 12
_RNG = np.random.default_rng(7)
#: what every method shares on a seed (common random numbers): a large seed-to-seed spread
SEED_EFFECT = _RNG.normal(0.0, 0.1, N_SEEDS)
#: small run-to-run noise, the same draw for every table so the verdicts do not depend on luck
RUN_NOISE = _RNG.normal(0.0, 0.003, (64, N_SEEDS))


def seed_rows(keys: dict, value: float, k: int = 0, **extra) -> list[dict]:
    """One group's per-seed rows: ``final`` and ``auc`` = value + the seed's shared effect + a
    little noise (draw ``k``); other columns from ``extra`` (scalars or per-seed arrays)."""
    v = value + SEED_EFFECT + RUN_NOISE[k % len(RUN_NOISE)]
    rows = []
    for i in range(N_SEEDS):
        row = {**keys, "seed": i, "final": v[i], "auc": v[i], "peak": v[i], "collapsed": False,
               "collapse_step": np.nan, "end_step": 200.0, "shift_mean_final": 0.01}
        row.update({c: (x[i] if np.ndim(x) else x) for c, x in extra.items()})
        rows.append(row)
    return rows


def test_paired_rules_beat_overlapping_intervals_on_cpu():
    # a consistent +0.03 on every seed, under a seed-to-seed spread of 0.1: the unpaired intervals overlap,
    # the paired test sees it
    rows = pd.DataFrame(seed_rows({"method": "drpo"}, 0.63, 1) + seed_rows({"method": "pg_is"}, 0.60, 2))
    _, low, _ = stats.bootstrap_ci(rows.loc[rows["method"] == "drpo", "final"].to_numpy())
    _, _, high = stats.bootstrap_ci(rows.loc[rows["method"] == "pg_is", "final"].to_numpy())
    assert low < high  # the old rule: overlapping intervals, no difference
    c = claims.claim_12(rows, margin=0.01)
    assert c.verdict == "supported" and c.p_value < 0.01
    assert c.numbers["drpo_minus_pg_is_final_diff"] == pytest.approx(0.03, abs=0.003)


def test_claim_12_is_an_equivalence_test_on_cpu():
    same = pd.DataFrame(seed_rows({"method": "drpo"}, 0.6, 1) + seed_rows({"method": "pg_is"}, 0.6, 2))
    c = claims.claim_12(same)
    assert c.verdict == "not supported" and "equivalent within the margin" in c.reason
    assert c.margin == claims.REWARD_MARGIN and c.n_seeds == N_SEEDS and c.world == "simulator"
    # the margin decides: a 0.03 difference is equivalent within 0.05, a measured difference within 0.01
    diff = pd.DataFrame(seed_rows({"method": "drpo"}, 0.63, 1) + seed_rows({"method": "pg_is"}, 0.60, 2))
    assert claims.claim_12(diff, margin=0.05).verdict == "not supported"
    assert claims.claim_12(diff, margin=0.01).verdict == "supported"
    # too noisy to tell either way
    noisy = same.copy()
    noisy.loc[noisy["method"] == "drpo", "final"] += np.resize([0.3, -0.3], N_SEEDS)
    assert claims.claim_12(noisy).verdict == "inconclusive"
    # a paired test needs shared seeds
    with pytest.raises(ValueError, match="different seeds"):
        claims.claim_12(same[~((same["method"] == "drpo") & (same["seed"] == 0))])


SETTINGS = ("bf16", "fp8_rollout", "stale")


def settings_seeds(paper: list[float], same: list[float]) -> pd.DataFrame:
    """DPPO-TV at AUC 0.5 in each setting; DRPO (12.5) and DRPO (0.15) at the given AUCs."""
    rows = []
    for i, s in enumerate(SETTINGS):
        rows += seed_rows({"setting": s, "variant": "dppo_tv", "method": "dppo_tv"}, 0.5, 3 * i)
        rows += seed_rows({"setting": s, "variant": "drpo", "method": "drpo"}, paper[i], 3 * i + 1)
        rows += seed_rows({"setting": s, "variant": "drpo (delta 0.15)", "method": "drpo"}, same[i], 3 * i + 2)
    return pd.DataFrame(rows)


def test_claim_6_at_the_papers_thresholds_and_at_equal_delta_on_cpu():
    c = claims.claim_6(settings_seeds([0.6, 0.6, 0.5], [0.4, 0.4, 0.4]))
    assert c.verdict == "supported" and c.numbers["paper_faster"] == 2 and c.numbers["same_delta_slower"] == 3
    assert "equal delta" in c.reason and c.n_cells == 3
    assert claims.claim_6(settings_seeds([0.6, 0.5, 0.4], [0.5] * 3)).verdict == "inconclusive"
    slower = claims.claim_6(settings_seeds([0.5, 0.4, 0.5], [0.5] * 3))
    assert slower.verdict == "not supported" and "slower in 1 (fp8_rollout)" in slower.reason
    # no difference anywhere: "not supported" only because equivalence is shown, else inconclusive
    assert claims.claim_6(settings_seeds([0.5] * 3, [0.5] * 3)).verdict == "not supported"
    assert claims.claim_6(settings_seeds([0.5] * 3, [0.5] * 3), margin=0.001).verdict == "inconclusive"


def sensitivity_seeds(dppo_best: tuple[float, float], needed: tuple[float, float], drpo_gap: float = 0.0,
                      grid=(0.05, 0.15, 0.3, 0.6, 1.0)) -> pd.DataFrame:
    """DPPO-TV at two noise levels: 0.8 at ``best``, 0.79 from ``needed`` up, 0.5 below; DRPO at 2.5
    and 12.5, apart by ``drpo_gap``."""
    rows, k = [], 0
    for noise, best, need in zip((0.1, 1.0), dppo_best, needed):
        for d in grid:
            v = 0.8 if d == best else (0.79 if d >= need else 0.5)
            rows += seed_rows({"method": "dppo_tv", "noise_std": noise, "delta": d}, v, k)
            k += 1
        for d in (2.5, 12.5):
            gap = drpo_gap if d == 2.5 else 0.0
            rows += seed_rows({"method": "drpo", "noise_std": noise, "delta": d}, 0.8 + gap, k)
            k += 1
    return pd.DataFrame(rows)


def test_claim_7_verdicts_on_cpu():
    c = claims.claim_7(sensitivity_seeds((0.3, 0.6), (0.15, 0.6)))
    assert c.verdict == "supported"
    assert c.numbers["dppo_tv_smallest_near_best_delta_noise_0.1"] == 0.15
    assert c.numbers["dppo_tv_smallest_near_best_delta_noise_1"] == 0.6
    assert claims.claim_7(sensitivity_seeds((0.3, 0.3), (0.15, 0.15))).verdict == "not supported"
    assert claims.claim_7(sensitivity_seeds((0.3, 0.6), (0.15, 0.6), drpo_gap=-0.2)).verdict == "not supported"
    # the best at an end of the grid (1: no mask at all) cannot be placed
    edge = claims.claim_7(sensitivity_seeds((0.3, 1.0), (0.15, 0.6)))
    assert edge.verdict == "inconclusive" and "end of the grid (delta 1 at noise 1)" in edge.reason


ABLATED = ("drpo", "drpo_no_abs_adv", "drpo_kl", "drpo_tv", "drpo_k3", "mask_drpo")
TUNED = (0.15, 0.5, 2.5, 12.5, 50.0)


def ablation_seeds(changes: dict[str, float]) -> pd.DataFrame:
    """Every ablation at 0.7 in both settings and at every delta, unless ``changes["setting:label"]``."""
    rows, k = [], 0
    for s in ("fp8_stale", "stress"):
        for v in ABLATED:
            for d in TUNED:
                label = v if d == 12.5 else f"{v} (delta {d:g})"
                value = 0.7 + changes.get(f"{s}:{label}", 0)
                rows += seed_rows({"setting": s, "variant": label, "method": v}, value, k)
                k += 1
    return pd.DataFrame(rows)


def tuning_summary(best: dict[str, float]) -> pd.DataFrame:
    """The tuning run: each divergence's final IQM peaks at ``best[method]`` (default 12.5)."""
    rows = []
    for s in ("fp8_stale", "stress"):
        for m in ("drpo", "drpo_kl", "drpo_tv", "drpo_k3"):
            for d in TUNED:
                rows.append(dict(setting=s, method=m, variant=f"{m} (delta {d:g})", delta=d,
                                 final_iqm=0.8 if d == best.get(m, 12.5) else 0.6))
    return pd.DataFrame(rows)


def reward_scale_seeds(changes: dict[str, float]) -> pd.DataFrame:
    """DRPO and its fair ablation at 0.7 in every spread and at both deltas, unless
    ``changes["setting:label"]``."""
    from drpo_sim.paper.analyses import reward_scales

    rows, k = [], 0
    for s in reward_scales.SPEC.settings:
        for d in reward_scales.DELTAS:
            for m in ("drpo", reward_scales.ABLATION):
                label = reward_scales.variant(m, d).label
                rows += seed_rows({"setting": s.name, "variant": label, "method": m},
                                  0.7 + changes.get(f"{s.name}:{label}", 0), k)
                k += 1
    return pd.DataFrame(rows)


def test_claim_8_tests_the_fair_ablation_where_reward_scales_spread_on_cpu():
    from drpo_sim.paper.analyses import reward_scales

    ablation = {d: reward_scales.variant(reward_scales.ABLATION, d).label for d in reward_scales.DELTAS}
    worse_where_spread = {f"spread_{s:g}:{ablation[d]}": -0.2 for s in (1, 2) for d in reward_scales.DELTAS}
    c = claims.claim_8(reward_scale_seeds(worse_where_spread))
    assert c.verdict == "supported" and c.world == "simulator, mixed reward scales" and c.n_cells == 4
    assert "lowers the final reward in 4" in c.reason and "equivalent in 2 of 2" in c.reason  # the control
    assert c.numbers["drpo_vs_batch_mean_spread_2_delta0.5_diff"] == pytest.approx(0.2, abs=0.02)
    # worse only without a spread: the control moves, the claim's family does not
    c = claims.claim_8(reward_scale_seeds({f"spread_0:{ablation[12.5]}": -0.2}))
    assert c.verdict == "not supported" and "lowers it in 1" in c.reason  # equivalent in every spread cell
    # half the spread cells better without abs(A): not supported
    c = claims.claim_8(reward_scale_seeds({f"spread_2:{ablation[0.5]}": 0.2}))
    assert c.verdict == "not supported"


def test_claim_8_needs_a_world_with_a_spread_of_advantages_on_cpu(monkeypatch):
    import dataclasses

    from drpo_sim.paper.analyses import reward_scales
    from drpo_sim.paper.specs import SIMULATOR

    monkeypatch.setattr(reward_scales, "SPEC", dataclasses.replace(reward_scales.SPEC, world=SIMULATOR))
    c = claims.claim_8(reward_scale_seeds({}))
    assert c.verdict == "not testable here" and "lacks advantage_spread" in c.reason
    assert c.needs[1] == "advantage_spread"


def arena_reward_scale_seeds(changes: dict[str, float]) -> pd.DataFrame:
    """The arena's reward-scale runs: every contestant at 0.9 final held-out reward in every
    spread, unless ``changes["setting:label"]``."""
    from drpo_sim.paper.analyses import arena_reward_scales

    rows = []
    for s in arena_reward_scales.SPEC.settings:
        for k, c in enumerate(arena_reward_scales.SPEC.contestants):
            rows += seed_rows({"setting": s.name, "reward_scale_spread": s.reward_scale_spread, "method": c.label,
                               "objective": c.objective}, 0.9 + changes.get(f"{s.name}:{c.label}", 0), k)
    return pd.DataFrame(rows)


def test_claim_8_comes_from_the_arena_when_it_ran_on_cpu():
    from drpo_sim.paper.analyses import arena_reward_scales as ars
    from drpo_sim.paper.analyses import reward_scales

    worse = {f"{ars.setting_name(s)}:{ars.label(reward_scales.ABLATION, d)}": -0.2 for s in (1, 2) for d in ars.DELTAS}
    c = claims.claim_8(reward_scale_seeds({}), arena_reward_scale_seeds(worse))
    assert c.verdict == "supported" and c.world == "arena, mixed reward scales" and c.n_cells == 4
    assert c.reason.startswith(f"in the arena (bf16, {N_SEEDS} shared seeds; final held-out reward)")
    assert "In the simulator (verdict there: not supported)" in c.reason  # the simulator's, beside it
    assert c.numbers["arena_drpo_vs_batch_mean_spread_2_delta0.15_diff"] == pytest.approx(0.2, abs=0.02)
    assert "sim_drpo_vs_batch_mean_spread_2_delta0.5_diff" in c.numbers
    assert c.figures == [ars.SPEC.name, reward_scales.FIGURE.name]
    # equivalent everywhere in the arena: not supported there, whatever the simulator says
    sim_worse = {f"spread_{s:g}:{reward_scales.variant(reward_scales.ABLATION, d).label}": -0.2
                 for s in (1, 2) for d in reward_scales.DELTAS}
    c = claims.claim_8(reward_scale_seeds(sim_worse), arena_reward_scale_seeds({}))
    assert c.verdict == "not supported" and "verdict there: supported" in c.reason
    # a run of the arena's analysis that lacks a delta is an error naming it
    partial = arena_reward_scale_seeds({})
    partial = partial[partial["method"] != ars.label("drpo", 0.15)]
    with pytest.raises(ValueError, match="no seeds for"):
        claims.claim_8(reward_scale_seeds({}), partial)


def test_claim_9_is_an_equivalence_test_on_cpu():
    assert claims.claim_9(ablation_seeds({})).verdict == "supported"
    c = claims.claim_9(ablation_seeds({"fp8_stale:mask_drpo": 0.1}))
    assert c.verdict == "not supported" and "(fp8_stale delta 12.5)" in c.reason
    # a difference inside the margin is still equivalence
    assert claims.claim_9(ablation_seeds({"fp8_stale:mask_drpo": 0.02})).verdict == "supported"
    # no difference measured, but none shown equivalent: inconclusive (absence of evidence)
    assert claims.claim_9(ablation_seeds({}), margin=0.0005).verdict == "inconclusive"


def test_claim_10_compares_each_penalty_at_its_tuned_delta_on_cpu():
    assert claims.claim_10(tuning_summary({}), ablation_seeds({})).verdict == "not supported"
    worse = {f"stress:{m}": -0.2 for m in ("drpo_kl", "drpo_tv", "drpo_k3")}
    assert claims.claim_10(tuning_summary({}), ablation_seeds(worse)).verdict == "supported"
    assert claims.claim_10(tuning_summary({}), ablation_seeds({"stress:drpo_kl": -0.2})).verdict == "inconclusive"
    # the same table, but KL tuned to 2.5, where it does as well as DRPO: no longer worse there
    kl_bad_at_default = {**worse, "stress:drpo_kl (delta 2.5)": 0.0}
    c = claims.claim_10(tuning_summary({"drpo_kl": 2.5}), ablation_seeds(kl_bad_at_default))
    assert c.verdict == "inconclusive" and c.numbers["drpo_kl_stress_tuned_delta"] == 2.5
    assert "tuned at an end of the grid" not in c.reason
    assert "drpo_tv 50 in stress" in claims.claim_10(tuning_summary({"drpo_tv": 50.0}), ablation_seeds({})).reason


def anchor_seeds(recompute_shift: float) -> pd.DataFrame:
    rows, k = [], 0
    for base in ("fp8_stale", "stress"):
        for anchor in ("rollout", "recompute"):
            for v in ("pg_is", "cispo", "dppo_tv (A<0 only)", "drpo"):
                shift = recompute_shift if anchor == "recompute" else 0.01
                rows += seed_rows({"setting": f"{base}_{anchor}", "variant": v, "method": v.split(" ")[0]}, 0.6, k,
                                  shift_mean_final=shift + 0.001 * RUN_NOISE[k] / 0.003)
                k += 1
    return pd.DataFrame(rows)


def test_claim_11_is_not_testable_in_the_simulator_on_cpu():
    c = claims.claim_11(anchor_seeds(0.03))
    assert c.verdict == "not testable here" and "lacks policy_dependent_mismatch" in c.reason
    assert "final mismatch is higher in 8" in c.reason and c.n_cells == 8
    assert "higher in 0" in claims.claim_11(anchor_seeds(0.005)).reason


def arena_seeds(peak: float, free_collapse: int, tr_collapse: int, when: float = 100.0) -> pd.DataFrame:
    rows = []
    for m, k in (("PG-IS", free_collapse), ("CISPO", free_collapse), ("DPPO-Binary-TV", tr_collapse),
                 ("DRPO (delta 12.5)", 0)):
        hit = np.arange(N_SEEDS) < k
        rows += seed_rows({"setting": "bf16", "method": m}, 0.5, 0, peak=peak, collapsed=hit,
                          collapse_step=np.where(hit, when, np.nan), end_step=600.0)
    return pd.DataFrame(rows)


def test_claim_4_needs_the_saturated_phase_and_tests_collapse_on_cpu():
    c = claims.claim_4(arena_seeds(0.6, 0, 0))
    assert c.verdict == "not testable here" and "never reach the saturated phase" in c.reason
    assert c.world == "arena" and c.numbers["best_median_peak_heldout"] == 0.6
    assert claims.claim_4(arena_seeds(0.95, 0, 0)).verdict == "not supported"
    c = claims.claim_4(arena_seeds(0.95, 8, 0))
    assert c.verdict == "supported" and c.numbers["PG_IS_collapse_rate"] == pytest.approx(8 / 12)
    assert c.numbers["PG_IS_collapse_low"] > 0.3 and c.numbers["PG_IS_logrank_p_holm"] < 0.05
    assert claims.claim_4(arena_seeds(0.95, 2, 0)).verdict == "inconclusive"  # too few to tell
    assert claims.claim_4(arena_seeds(0.95, 8, 8)).verdict == "not supported"


def test_claims_from_results_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="arena_seeds.csv"):
        claims.claims_from_results(tmp_path)


def test_the_table_parameters_are_named_after_their_analyses_on_cpu():
    assert claims.claim_4(arena_seeds=arena_seeds(0.6, 0, 0)).number == 4
    assert claims.claim_6(settings_seeds=settings_seeds([0.5] * 3, [0.5] * 3)).number == 6
    assert claims.claim_7(sensitivity_seeds=sensitivity_seeds((0.3, 0.6), (0.15, 0.6))).number == 7
    assert claims.claim_8(reward_scale_seeds=reward_scale_seeds({})).number == 8
    assert claims.claim_9(ablation_seeds=ablation_seeds({})).number == 9
    assert claims.claim_10(tuning_summary=tuning_summary({}), ablation_seeds=ablation_seeds({})).number == 10
    assert claims.claim_11(anchor_seeds=anchor_seeds(0.03)).number == 11


def test_write_and_load_claims_round_trip(tmp_path):
    results = [claims.claim_2(vocab_sizes=(8,), trials=2), claims.claim_12(pd.DataFrame(
        seed_rows({"method": "drpo"}, 0.5, 1) + seed_rows({"method": "pg_is"}, 0.6, 2)))]
    results[1].profile = "quick"
    claims.write_claims(results, tmp_path / claims.CLAIMS_FILE)
    loaded = claims.load_claims(tmp_path)
    assert [c["number"] for c in loaded] == [2, 12] and loaded[1]["verdict"] == "supported"
    assert loaded[0]["statement"] == claims.STATEMENTS[2] and loaded[1]["figures"] == ["convergence_fp8_stale"]
    assert loaded[1]["world"] == "simulator" and loaded[1]["profile"] == "quick" and loaded[1]["n_seeds"] == N_SEEDS
    assert loaded[0]["world"] == "registry" and loaded[0]["p_value"] is None
    (tmp_path / claims.CLAIMS_FILE).write_text(json.dumps(loaded + [loaded[0]]))
    with pytest.raises(ValueError, match="claims.json: claim 2: appears twice"):
        claims.load_claims(tmp_path)
    (tmp_path / claims.CLAIMS_FILE).write_text(json.dumps([{**loaded[0], "n_seeds": "many"}]))
    with pytest.raises(ValueError, match="claim 2: 'n_seeds' has the wrong type"):
        claims.load_claims(tmp_path)
    # a file written before the testing fields existed still loads
    old = [{k: v for k, v in c.items() if k not in claims.TESTED_FIELDS} for c in loaded]
    (tmp_path / claims.CLAIMS_FILE).write_text(json.dumps(old))
    assert [c["number"] for c in claims.load_claims(tmp_path)] == [2, 12]
    with pytest.raises(FileNotFoundError, match="claims.json: not found"):
        claims.load_claims(tmp_path / "nowhere")



OURS = [{"number": 2, "verdict": "supported"}, {"number": 1, "verdict": "not supported"},
        {"number": 3, "verdict": "inconclusive"}]


def test_verdict_table_alone():
    lines = claims.verdict_table(OURS).splitlines()
    assert [line.split()[0] for line in lines] == ["claim", "1", "2", "3"]  # sorted by claim number
    assert lines[0].split() == ["claim", "this", "run"]
    assert [line[7:].strip() for line in lines[1:]] == ["not supported", "supported", "inconclusive"]
    assert "agree" not in claims.verdict_table(OURS)


def test_verdict_table_beside_a_reference_marks_disagreements():
    reference = [{"number": 1, "verdict": "not supported"}, {"number": 2, "verdict": "inconclusive"},
                 {"number": 12, "verdict": "supported"}]
    text = claims.verdict_table(OURS, reference, labels=("quick (out)", "committed (figures)"))
    lines = text.splitlines()
    assert lines[0].split() == ["claim", "quick", "(out)", "committed", "(figures)", "agree"]
    agree = lines[0].index("agree")
    rows = {int(line.split()[0]): line for line in lines[1:-1]}
    assert list(rows) == [1, 2, 3]
    assert rows[1][agree:] == "yes" and re.search("not supported +not supported", rows[1])
    assert rows[2][agree:] == "NO" and re.search(r"supported\s+inconclusive\s+NO$", rows[2])
    assert rows[3][agree:] == "NO" and re.search(r"inconclusive\s+not tested\s+NO$", rows[3])  # not in the reference
    assert lines[-1] == "1 of 3 verdicts agree"
    # the same run on both sides: every verdict agrees
    same = claims.verdict_table(OURS, OURS).splitlines()
    assert same[-1] == "3 of 3 verdicts agree" and all(line.endswith("yes") for line in same[1:-1])


def arena_comparison_seeds(values: dict[str, float], shift: dict[str, float] | None = None) -> pd.DataFrame:
    """The arena's bf16 sanity test: each contestant's final held-out reward and AUC at
    ``values[label]`` (default 0.9), its final mean abs(pi - mu) at ``shift[label]`` (default 0.003)."""
    from drpo_sim.paper.analyses import arena

    rows = []
    for k, c in enumerate(arena.SPEC.contestants):
        rows += seed_rows({"setting": "bf16", "method": c.label}, values.get(c.label, 0.9), k,
                          mismatch_mean_final=(shift or {}).get(c.label, 0.003) + 1e-4 * RUN_NOISE[k] / 0.003)
    return pd.DataFrame(rows)


def test_claims_6_11_12_take_their_verdicts_from_the_arena_when_given_on_cpu():
    from drpo_sim.paper.analyses import arena

    sim6 = settings_seeds([0.5] * 3, [0.5] * 3)
    # DRPO at 12.5 faster than DPPO-TV in the arena: supported there, whatever the simulator says
    c = claims.claim_6(sim6, arena_comparison_seeds({arena.DRPO_PAPER: 0.95, arena.DRPO_EQUAL: 0.8}))
    assert c.verdict == "supported" and c.world == "arena" and c.n_cells == 1 and c.n_seeds == N_SEEDS
    assert "faster" in c.reason and "In the simulator (verdict there: not supported)" in c.reason
    assert c.numbers["arena_paper_auc_diff"] == pytest.approx(0.05, abs=0.01)
    assert c.numbers["arena_same_delta_auc_diff"] == pytest.approx(-0.1, abs=0.01)
    assert "sim_paper_faster" in c.numbers and c.sources[0] == "arena seeds"
    assert claims.claim_6(sim6, arena_comparison_seeds({})).verdict == "not supported"  # equivalent
    # claim 11: the recomputed anchor's final mismatch above the rollout anchor's, in the arena
    c = claims.claim_11(anchor_seeds(0.03), arena_comparison_seeds({}, {arena.MINIRL: 0.01}))
    assert c.verdict == "supported" and c.world == "arena" and "is higher than with the rollout anchor" in c.reason
    assert "In the simulator: the simulator lacks policy_dependent_mismatch" in c.reason
    c = claims.claim_11(anchor_seeds(0.03), arena_comparison_seeds({}, {arena.PPO_ROLLOUT: 0.01}))
    assert c.verdict == "not supported"
    # claim 12: DRPO at 12.5 against PG-IS in the arena
    sim12 = pd.DataFrame(seed_rows({"method": "drpo"}, 0.5, 1) + seed_rows({"method": "pg_is"}, 0.5, 2))
    c = claims.claim_12(sim12, arena_comparison_seeds({}))
    assert c.verdict == "not supported" and c.world == "arena" and "equivalent within the margin" in c.reason
    c = claims.claim_12(sim12, arena_comparison_seeds({"PG-IS": 0.7}))
    assert c.verdict == "supported" and c.numbers["arena_drpo_minus_pg_is_final_diff"] == pytest.approx(0.2, abs=0.01)
    assert "sim_drpo_minus_pg_is_final_diff" in c.numbers
