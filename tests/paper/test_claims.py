"""The claim tests (drpo_sim.paper.claims): the geometric claims hold; claim 5 reads a replay table; the
others read the analyses' summaries, with each verdict made to flip; the verdict table."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from drpo_sim import analysis
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


def sensitivity_table(dppo_high_needs_more=True, drpo_flat=True):
    rows = []
    for noise, level in ((0.1, "noise 0.1"), (1.0, "noise 1")):
        for d in (0.05, 0.15, 0.6):
            good = d >= (0.6 if (noise == 1.0 and dppo_high_needs_more) else 0.15)
            iqm = 0.8 if good else 0.5
            rows.append(dict(method="dppo_tv", noise_std=noise, level=level, delta=d, final_iqm=iqm,
                             final_low=iqm - 0.02, final_high=iqm + 0.02))
        for d in (2.5, 12.5):
            iqm = 0.8 if (drpo_flat or d == 12.5) else 0.6
            rows.append(dict(method="drpo", noise_std=noise, level=level, delta=d, final_iqm=iqm,
                             final_low=iqm - 0.02, final_high=iqm + 0.02))
    return pd.DataFrame(rows)


def test_claim_7_verdicts_on_cpu():
    c = claims.claim_7(sensitivity_table())
    assert c.verdict == "supported"
    assert c.numbers["dppo_tv_smallest_near_best_delta_noise0.1"] == 0.15
    assert c.numbers["dppo_tv_smallest_near_best_delta_noise1"] == 0.6
    assert claims.claim_7(sensitivity_table(dppo_high_needs_more=False)).verdict == "not supported"
    assert claims.claim_7(sensitivity_table(drpo_flat=False)).verdict == "not supported"


def test_claim_12_verdicts_on_cpu():
    def summary(drpo_iqm, p):
        return pd.DataFrame([
            dict(method="pg_is", n_seeds=24, final_iqm=0.9, final_low=0.88, final_high=0.92, p_improve=np.nan,
                 p_improve_low=np.nan, p_improve_high=np.nan),
            dict(method="drpo", n_seeds=24, final_iqm=drpo_iqm, final_low=drpo_iqm - 0.02, final_high=drpo_iqm + 0.02,
                 p_improve=p, p_improve_low=p - 0.15, p_improve_high=p + 0.15),
        ])
    assert claims.claim_12(summary(0.89, 0.45)).verdict == "not supported"
    assert claims.claim_12(summary(0.80, 0.10)).verdict == "supported"
    assert claims.claim_12(summary(0.89, 0.80)).verdict == "supported"  # P(improve) interval excludes 0.5


# ------------------------------------------------------------------------------------------------
# claims read off panel summaries (drpo_sim.summaries.panel_summary): synthetic tables where each verdict flips


def panel(rows: dict[tuple[str, str], float], *, width: float = 0.02, collapse: dict | None = None,
          shift: dict | None = None, auc: dict | None = None) -> pd.DataFrame:
    """A panel summary: final reward ``rows[(setting, variant)]`` with an interval of +-width;
    AUC, final mismatch and collapse rate from the optional dicts (defaults: the reward, 0.01, 0)."""
    out = []
    for (setting, variant), v in rows.items():
        a = (auc or {}).get((setting, variant), v)
        s = (shift or {}).get((setting, variant), 0.01)
        out.append(dict(setting=setting, variant=variant, method=variant.split(" ")[0], n_seeds=8,
                        final_iqm=v, final_low=v - width, final_high=v + width,
                        auc_iqm=a, auc_low=a - width, auc_high=a + width,
                        collapse_rate=(collapse or {}).get((setting, variant), 0.0),
                        shift_final_iqm=s, shift_final_low=s * 0.9, shift_final_high=s * 1.1,
                        shift_peak=0.05, reward_peak=v, kept_of_peak=1.0))
    return pd.DataFrame(out)


SETTINGS = ("bf16", "fp8_rollout", "stale")


def test_claim_6_compares_speed_at_the_same_threshold_on_cpu():
    def table(delta015_auc):
        rows = {}
        for s in SETTINGS:
            rows.update({(s, "dppo_tv"): 0.5, (s, "drpo"): 0.5, (s, "drpo (delta 0.15)"): 0.5})
        return panel(rows, auc={(s, "drpo (delta 0.15)"): delta015_auc[i] for i, s in enumerate(SETTINGS)})
    c = claims.claim_6(table([0.6, 0.6, 0.5]))
    assert c.verdict == "supported"
    assert c.numbers["same_geometry_faster"] == 2 and c.numbers["same_geometry_slower"] == 0
    assert claims.claim_6(table([0.6, 0.5, 0.4])).verdict == "inconclusive"
    c = claims.claim_6(table([0.5, 0.4, 0.5]))
    assert c.verdict == "not supported" and "slower in 1 (fp8_rollout)" in c.reason


ABLATED = ("drpo", "drpo_no_abs_adv", "drpo_kl", "drpo_tv", "drpo_k3", "mask_drpo")


def ablation_table(changes: dict[str, float], collapse: dict | None = None) -> pd.DataFrame:
    rows = {}
    for s in ("fp8_stale", "stress"):
        for v in ABLATED:
            for sfx in ("", " (delta 0.5)"):
                rows[(s, v + sfx)] = 0.7 + changes.get(f"{s}:{v}{sfx}", 0.0)
    return panel(rows, collapse=collapse)


def test_ablation_claims_verdicts_on_cpu():
    same = ablation_table({})
    assert claims.claim_8(same).verdict == "not supported"
    assert claims.claim_9(same).verdict == "supported"
    assert claims.claim_10(same).verdict == "not supported"
    c8 = claims.claim_8(ablation_table({"stress:drpo_no_abs_adv (delta 0.5)": -0.2}))
    assert c8.verdict == "supported" and c8.numbers["worse"] == 1 and "stress (delta 0.5)" in c8.reason
    mixed = ablation_table({"stress:drpo_no_abs_adv": -0.2, "fp8_stale:drpo_no_abs_adv": 0.2})
    assert claims.claim_8(mixed).verdict == "inconclusive"
    # more collapses count as worse even where the rewards' intervals overlap
    collapsing = ablation_table({}, collapse={("stress", "drpo_no_abs_adv"): 0.25})
    assert claims.claim_8(collapsing).verdict == "supported"
    # named by its cell, delta included, and counted once
    c8 = claims.claim_8(ablation_table({"stress:drpo_no_abs_adv (delta 0.5)": -0.2},
                                       collapse={("stress", "drpo_no_abs_adv (delta 0.5)"): 0.25}))
    assert c8.numbers["worse"] == 1 and "(stress (delta 0.5))" in c8.reason
    assert claims.claim_9(ablation_table({"fp8_stale:mask_drpo": 0.1})).verdict == "not supported"
    worse_all = {f"stress:{m}": -0.2 for m in ("drpo_kl", "drpo_tv", "drpo_k3")}
    assert claims.claim_10(ablation_table(worse_all)).verdict == "supported"
    assert claims.claim_10(ablation_table({"stress:drpo_kl": -0.2})).verdict == "inconclusive"  # TV, K3 never worse


def anchor_table(recompute_shift: float, neg_collapse: float = 0.0, free_collapse: float = 0.0) -> pd.DataFrame:
    rows, shift, collapse = {}, {}, {}
    for base in ("fp8_stale", "stress"):
        for anchor in ("rollout", "recompute"):
            for v in ("pg_is", "cispo", "dppo_tv (A<0 only)", "drpo"):
                rows[(f"{base}_{anchor}", v)] = 0.6
                shift[(f"{base}_{anchor}", v)] = recompute_shift if anchor == "recompute" else 0.01
    collapse[("stress_rollout", "pg_is")] = free_collapse
    collapse[("stress_rollout", "dppo_tv (A<0 only)")] = neg_collapse
    return panel(rows, shift=shift, collapse=collapse)


def test_claim_11_compares_the_final_mismatch_of_the_two_anchors_on_cpu():
    c = claims.claim_11(anchor_table(0.03))
    assert c.verdict == "supported" and c.numbers["more_mismatch"] == c.numbers["pairs"] == 8
    assert claims.claim_11(anchor_table(0.01)).verdict == "not supported"
    assert claims.claim_11(anchor_table(0.005)).verdict == "not supported"


def test_claim_4_needs_a_collapse_without_trust_region_on_cpu():
    settings = panel({(s, "pg_is"): 0.8 for s in SETTINGS})
    c = claims.claim_4(settings, anchor_table(0.01))
    assert c.verdict == "not supported" and c.numbers["free_collapse_rate_max"] == 0
    assert claims.claim_4(settings, anchor_table(0.01, free_collapse=0.5)).verdict == "supported"
    assert claims.claim_4(settings, anchor_table(0.01, free_collapse=0.5, neg_collapse=0.5)).verdict == "inconclusive"


def test_claims_from_results_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="settings_summary.csv"):
        claims.claims_from_results(tmp_path)


def test_the_table_parameters_are_named_after_their_analyses_on_cpu():
    settings = panel({(s, "pg_is"): 0.8 for s in SETTINGS})
    assert claims.claim_4(settings_table=settings, anchor_table=anchor_table(0.01, free_collapse=0.5)).verdict == \
        "supported"
    rows = {}
    for s in SETTINGS:
        rows.update({(s, "dppo_tv"): 0.5, (s, "drpo"): 0.5, (s, "drpo (delta 0.15)"): 0.5})
    assert claims.claim_6(settings_table=panel(rows)).verdict == "not supported"
    for claim in (claims.claim_8, claims.claim_9, claims.claim_10):
        assert claim(ablation_table=ablation_table({})).number == int(claim.__name__.split("_")[1])
    assert claims.claim_11(anchor_table=anchor_table(0.03)).verdict == "supported"


def test_write_and_load_claims_round_trip(tmp_path):
    results = [claims.claim_2(vocab_sizes=(8,), trials=2), claims.claim_12(pd.DataFrame([
        dict(method="pg_is", n_seeds=4, final_iqm=0.9, final_low=0.88, final_high=0.92, p_improve=np.nan,
             p_improve_low=np.nan, p_improve_high=np.nan),
        dict(method="drpo", n_seeds=4, final_iqm=0.8, final_low=0.78, final_high=0.82, p_improve=0.1,
             p_improve_low=0.0, p_improve_high=0.2)]))]
    claims.write_claims(results, tmp_path / claims.CLAIMS_FILE)
    loaded = claims.load_claims(tmp_path)
    assert [c["number"] for c in loaded] == [2, 12] and loaded[1]["verdict"] == "supported"
    assert loaded[0]["statement"] == claims.STATEMENTS[2] and loaded[1]["figures"] == ["convergence_fp8_stale"]
    (tmp_path / claims.CLAIMS_FILE).write_text(json.dumps(loaded + [loaded[0]]))
    with pytest.raises(ValueError, match="claims.json: claim 2: appears twice"):
        claims.load_claims(tmp_path)
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
    assert rows[1][agree:] == "yes" and "not supported  not supported" in rows[1]
    assert rows[2][agree:] == "NO" and re.search(r"supported\s+inconclusive\s+NO$", rows[2])
    assert rows[3][agree:] == "NO" and re.search(r"inconclusive\s+not tested\s+NO$", rows[3])  # not in the reference
    assert lines[-1] == "1 of 3 verdicts agree"
    # the same run on both sides: every verdict agrees
    same = claims.verdict_table(OURS, OURS).splitlines()
    assert same[-1] == "3 of 3 verdicts agree" and all(line.endswith("yes") for line in same[1:-1])
