"""Typed experiment specifications: what each analysis runs, declared once.

Every analysis of :mod:`drpo_sim.paper.analyses` declares one spec instance at its top; the jobs
(:mod:`drpo_sim.paper.jobs`) run it, and the claims and the report import its names (settings,
variants, result files) from it instead of retyping them. A spec is frozen and its result file
names are properties, so renaming a variant or a setting is one edit, and an analysis that does
not exist is an import error, not a surprise at the end of an hour-long run.

The conditions several analyses share are declared here once: the tabular task of the simulation
figures and the engines (:data:`BF16`, :data:`FP8`, :data:`FP8_STALE`, :data:`STRESS`).

So are the *worlds* (:class:`World`): each declares the mechanisms (:data:`MECHANISMS`) it has,
every spec names the world it runs in, and a claim that needs a mechanism its world lacks gets
the verdict "not testable here" (:mod:`drpo_sim.paper.claims`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from drpo_sim import objectives
from drpo_sim.arena.calibration import CALIBRATION_FILE
from drpo_sim.arena.pretrain import BaseModelConfig
from drpo_sim.arena.train import ArenaConfig, Contestant
from drpo_sim.config import LAB_OBJECTIVES, LAB_PRECISIONS, NOISE_PRESETS, check_profile
from drpo_sim.gradients import QUESTION

# ----------------------------------------------------------------------------------------------
# worlds and their mechanisms

#: What a world can have that a claim may need, by name.
MECHANISMS: Mapping[str, str] = {
    "mismatch": "an engine whose probabilities mu differ from the trainer's pi",
    "policy_dependent_mismatch": "an engine mismatch that depends on where the parameters are (a second "
                                 "numerical pass over the trainer's own weights), so training can make it grow",
    "advantage_spread": "advantages whose size is varied on purpose across prompts (mixed reward scales)",
    "seeds": "independent runs on shared seeds",
}


@dataclass(frozen=True)
class World:
    """Where a claim is tested: a name, a description, and the :data:`MECHANISMS` it has."""

    name: str
    description: str
    mechanisms: frozenset[str]

    def __post_init__(self) -> None:
        unknown = sorted(set(self.mechanisms) - set(MECHANISMS))
        if unknown:
            raise ValueError(f"world {self.name}: unknown mechanisms {unknown}; known: {sorted(MECHANISMS)}")

    def lacks(self, needs: Sequence[str]) -> list[str]:
        """The mechanisms of ``needs`` this world does not have (unknown names are an error)."""
        unknown = sorted(set(needs) - set(MECHANISMS))
        if unknown:
            raise ValueError(f"unknown mechanisms {unknown}; known: {sorted(MECHANISMS)}")
        return [m for m in needs if m not in self.mechanisms]


#: The objectives' closed forms, evaluated exactly: no training, no seeds.
REGISTRY = World("registry", "the objectives' closed forms, evaluated exactly", frozenset())
#: The simulator: the engine's error is injected (noise, bias, rounding of the logits, staleness),
#: so it does not follow the policy anywhere the parameters go.
SIMULATOR = World("simulator", "tabular tasks; engine error injected into the logits, stale rollouts",
                  frozenset({"mismatch", "seeds"}))
#: The simulator with mixed reward scales across prompts (``reward_scale_spread``): the size of the
#: advantages is varied on purpose, the mechanism claim 8 is about.
SIMULATOR_REWARD_SCALES = World("simulator, mixed reward scales",
                                "the simulator's tabular task with reward scales spread over decades across prompts",
                                frozenset({"mismatch", "seeds", "advantage_spread"}))
#: The arena: the engine is a reduced-precision pass over the trainer's own parameters.
ARENA = World("arena", "1-layer transformers; the engine a bf16/fp16/fp8 pass over the trainer's own weights",
              frozenset({"mismatch", "policy_dependent_mismatch", "seeds"}))
#: The arena with the learner's reward scales spread over decades across the task's keys.
ARENA_REWARD_SCALES = World("arena, mixed reward scales",
                            "the arena with the learner's reward scales spread over decades across the task's keys",
                            frozenset({"mismatch", "policy_dependent_mismatch", "seeds", "advantage_spread"}))


# ----------------------------------------------------------------------------------------------
# shared conditions

#: The tabular task of the simulation figures: 8 prompts of 4 tokens, V = 256, prefix reward, the
#: batch split into 4 mini-batch updates. On the bandit every method locks onto one token within
#: ~50 steps and nothing separates; on this sequence task methods do. The analyses start from it
#: and state what they change.
TABULAR_TASK: Mapping[str, Any] = {"env": "tabular", "vocab_size": 256, "n_prompts": 8, "horizon": 4,
                                   "updates_per_batch": 4}

#: A bf16-like engine: the ``bf16`` noise preset (:data:`drpo_sim.config.NOISE_PRESETS`).
BF16: Mapping[str, Any] = NOISE_PRESETS["bf16"]
#: An fp8-like engine: the ``fp8`` noise preset.
FP8: Mapping[str, Any] = NOISE_PRESETS["fp8"]
#: The headline setting: the fp8-like engine with rollouts 8 optimiser updates stale.
FP8_STALE: Mapping[str, Any] = {**FP8, "staleness": 8}
#: A systematic engine bias (fixed per state and token), noise, stale rollouts and a large step:
#: the setting where the probes found the largest reward losses without a trust region.
STRESS: Mapping[str, Any] = {"bias_std": 1.0, "noise_std": 0.3, "staleness": 16, "lr": 0.2}


# ----------------------------------------------------------------------------------------------
# building blocks


@dataclass(frozen=True)
class Profile:
    """How long an analysis runs in one profile: optimiser ``steps`` and the number of ``seeds``,
    numbered from ``first_seed`` (a tuning run takes seeds no evaluation uses)."""

    steps: int
    seeds: int
    first_seed: int = 0

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.first_seed, self.first_seed + self.seeds))


@dataclass(frozen=True)
class GridProfile(Profile):
    """A profile of the phase diagram: also its grid of engine noise and staleness."""

    noise_std: tuple[float, ...] = ()
    staleness: tuple[int, ...] = ()


@dataclass(frozen=True)
class LabProfile(Profile):
    """A profile of the lab: also the objectives whose first seed keeps a token log (None: all)."""

    token_log_objectives: tuple[str, ...] | None = None


class _Profiled:
    """Mixin: a spec with a ``quick`` and a ``full`` profile."""

    quick: Profile
    full: Profile

    def profile(self, name: str) -> Any:
        """The profile ``name`` (``quick`` or ``full``; anything else is a ``ValueError``)."""
        return getattr(self, check_profile(name))


class _Tables(_Profiled):
    """Mixin: a spec whose ``name`` names its result tables, ``<name>.csv``, ``<name>_summary.csv``
    and ``<name>_seeds.csv`` (one row per seed: :func:`drpo_sim.summaries.seed_table`)."""

    name: str

    @property
    def data_file(self) -> str:
        return f"{self.name}.csv"

    @property
    def summary_file(self) -> str:
        return f"{self.name}_summary.csv"

    @property
    def seeds_file(self) -> str:
        return f"{self.name}_seeds.csv"


def param_suffix(params: Mapping[str, Any]) -> str:
    """How a variant's parameters read in its label: ``""`` or ``" (delta 0.5)"``."""
    if not params:
        return ""
    return " (" + ", ".join(f"{k} {v:g}" for k, v in params.items()) + ")"


@dataclass(frozen=True)
class Variant:
    """An objective with its parameters, under a label; one objective may appear with several
    parameter sets. The label defaults to the name with :func:`param_suffix`."""

    method: str
    params: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.method + param_suffix(self.params))


@dataclass(frozen=True)
class Setting:
    """A named condition: the configuration fields it changes, and a title for the figures."""

    name: str
    title: str
    fields: Mapping[str, Any] = field(default_factory=dict)


def _describe_settings(settings: Sequence[Setting]) -> dict[str, dict[str, Any]]:
    """Settings as a manifest records them: name -> title and the fields they change."""
    return {s.name: {"title": s.title, **s.fields} for s in settings}


@dataclass(frozen=True)
class PanelFigure:
    """One figure of a panel experiment: those variants, one column per setting shown."""

    name: str
    title: str
    variants: tuple[str, ...]
    settings: tuple[str, ...] | None = None  # None: every setting


# ----------------------------------------------------------------------------------------------
# the specs


@dataclass(frozen=True)
class GeometrySpec:
    """The geometry figures: which objectives at which thresholds (:class:`drpo_sim.geometry.GeometryConfig`
    holds the grid), and the names of their data files."""

    config: Any
    weight_figure: str = "weight_vs_pi"
    ablations_figure: str = "weight_vs_pi_ablations"
    plane_figure: str = "weight_plane"
    delta_range_figure: str = "drpo_delta_range"
    more_figure: str = "weight_vs_pi_more"
    gap_figure: str = "weight_vs_gap"
    weight_file: str = "weight_vs_pi.csv"
    plane_file: str = "weight_plane.csv"
    delta_range_file: str = "drpo_delta_range.csv"
    delta_curves_file: str = "drpo_delta_curves.csv"
    gap_file: str = "weight_vs_gap.csv"
    gap_config: Any = None  # a drpo_sim.geometry.GapConfig; None: its defaults

    @property
    def figures(self) -> tuple[str, ...]:
        return (self.weight_figure, self.ablations_figure, self.more_figure, self.plane_figure,
                self.delta_range_figure, self.gap_figure)

    @property
    def data_files(self) -> tuple[str, ...]:
        return (self.weight_file, self.plane_file, self.delta_range_file, self.delta_curves_file, self.gap_file)


@dataclass(frozen=True)
class GradientWorldProfile:
    """One world's gradient sweep in one profile: the vocabulary, the samples per batch (the bandit:
    tokens; the tabular task: responses per prompt), the independent batches, and the grid of engine
    noise stds and staleness (updates since the rollout) of :func:`drpo_sim.gradients.gradient_sweep`."""

    vocab: int
    samples: int
    batches: int
    noise: tuple[float, ...]
    staleness: tuple[int, ...]


@dataclass(frozen=True)
class GradientArenaProfile:
    """The small arena's gradient sweep in one profile (:func:`drpo_sim.gradients.arena_gradient_sweep`,
    on :data:`drpo_sim.gradients.ARENA_BASE`, whose responses are enumerable): responses per prompt,
    batches, the engine precisions and the staleness (exact-gradient updates since the rollout)."""

    samples: int
    batches: int
    precisions: tuple[str, ...]
    staleness: tuple[int, ...]
    prompts: int = 4


@dataclass(frozen=True)
class GradientSpec(_Profiled):
    """The gradient diagnostics against the exact gradient (:mod:`drpo_sim.gradients`): per profile
    the sweep of each world (``{"bandit": ..., "tabular": ...}``, and ``"arena"``: a
    :class:`GradientArenaProfile`, the small arena over engine precisions), the KL of each update since the
    rollout, the seed of the engine's noise and of the batches, and the objectives (label ->
    ``(name, params)``; ``None``: :data:`drpo_sim.gradients.SWEEP_OBJECTIVES`). The equivalence test
    of ``question`` against ``pg_is`` uses :data:`drpo_sim.gradients.EQUIVALENCE_MARGIN`, fixed
    before the full sweep was run."""

    quick: Mapping[str, GradientWorldProfile | GradientArenaProfile]
    full: Mapping[str, GradientWorldProfile | GradientArenaProfile]
    step_kl: float = 1e-3
    seed: int = 0
    methods: Mapping[str, tuple[str, dict]] | None = None
    question: str = QUESTION
    name: str = "gradient_diagnostics"
    #: one cell of the sweep, (engine noise std, staleness), where every registered objective and
    #: every correction (on GRPO) is measured on the sweep's batches: ``<stem>_all_objectives.csv``
    table_at: tuple[float, int] = (0.3, 2)

    def stem(self, env: str) -> str:
        """The file stem of a world's outputs: ``gradient_diagnostics`` (bandit),
        ``gradient_diagnostics_<env>`` otherwise."""
        return self.name if env == "bandit" else f"{self.name}_{env}"

    def figures(self, profile: str) -> tuple[str, ...]:
        return tuple(self.stem(env) for env in self.profile(profile))

    def data_files(self, profile: str) -> tuple[str, ...]:
        return tuple(f"{self.stem(env)}{suffix}" for env, world in self.profile(profile).items()
                     for suffix in (".csv", "_equivalence.csv",
                                    *(() if isinstance(world, GradientArenaProfile) else ("_all_objectives.csv",))))

    @staticmethod
    def every_objective() -> dict[str, tuple[str, dict]]:
        """Label -> ``(name, params)``: every registered objective at its defaults, and GRPO with each
        correction at its defaults."""
        every = {name: (name, {}) for name in objectives.available()}
        every.update({f"grpo + {c}": ("grpo", {"correction": c}) for c in objectives.corrections()})
        return every


@dataclass(frozen=True)
class FlowSpec:
    """The frozen-``mu`` flows: the objectives drawn, each with its parameters."""

    objectives: tuple[Variant, ...]
    figure: str = "fixed_point_flows"
    rest_points_file: str = "rest_points.csv"
    rest_curves_file: str = "fixed_point_rest_curves.csv"


@dataclass(frozen=True)
class ConvergenceSpec(_Tables):
    """Curves of several objectives in one setting (``config``: flat configuration fields)."""

    name: str
    methods: tuple[str, ...]
    config: Mapping[str, Any]
    quick: Profile
    full: Profile
    world: World = SIMULATOR


@dataclass(frozen=True)
class PanelSpec(_Tables):
    """Several settings x several variants on the same seeds, drawn as panels.

    ``config``: flat fields shared by all; each :class:`Setting` says what it changes; each
    :class:`Variant` is an objective with its parameters; each :class:`PanelFigure` shows some
    variants in some settings (rows: reward and mismatch).
    """

    name: str
    config: Mapping[str, Any]
    settings: tuple[Setting, ...]
    variants: tuple[Variant, ...]
    figures: tuple[PanelFigure, ...]
    quick: Profile
    full: Profile
    world: World = SIMULATOR

    def __post_init__(self) -> None:
        labels = [v.label for v in self.variants]
        names = [s.name for s in self.settings]
        for what, items in (("variant", labels), ("setting", names)):
            dup = sorted({x for x in items if items.count(x) > 1})
            if dup:
                raise ValueError(f"{self.name}: {what} {', '.join(dup)} declared twice")
        for fig in self.figures:
            unknown = [v for v in fig.variants if v not in labels] + [s for s in fig.settings or () if s not in names]
            if unknown:
                raise ValueError(f"{self.name}: figure {fig.name} shows undeclared {', '.join(unknown)}")

    def setting(self, name: str) -> Setting:
        for s in self.settings:
            if s.name == name:
                return s
        raise KeyError(f"{self.name}: no setting {name!r}; declared: {', '.join(s.name for s in self.settings)}")

    def label(self, method: str, **params: Any) -> str:
        """The label of the variant that runs ``method`` with exactly ``params``."""
        for v in self.variants:
            if v.method == method and dict(v.params) == params:
                return v.label
        raise KeyError(f"{self.name}: no variant runs {method}{param_suffix(params)}")

    def describe(self, profile: Profile) -> dict[str, Any]:
        """The spec as the manifest records it."""
        return {"config": dict(self.config),
                "settings": _describe_settings(self.settings),
                "variants": {v.label: [v.method, dict(v.params)] for v in self.variants},
                "methods": sorted({v.method for v in self.variants}), **dataclasses.asdict(profile)}


@dataclass(frozen=True)
class TuningSpec(_Tables):
    """A tuning run: each method at every threshold ``delta`` of one grid (the same budget for
    each), in several settings, on seeds of its own (``first_seed`` of its profiles); its figure
    is ``name``."""

    name: str
    config: Mapping[str, Any]
    settings: tuple[Setting, ...]
    methods: tuple[str, ...]
    deltas: tuple[float, ...]
    quick: Profile
    full: Profile
    world: World = SIMULATOR

    @property
    def variants(self) -> tuple[Variant, ...]:
        return tuple(Variant(m, {"delta": d}) for m in self.methods for d in self.deltas)

    @property
    def figure(self) -> str:
        return self.name

    def describe(self, profile: Profile) -> dict[str, Any]:
        """The spec as the manifest records it."""
        return {"config": dict(self.config),
                "settings": _describe_settings(self.settings),
                "methods": list(self.methods), "deltas": list(self.deltas), **dataclasses.asdict(profile)}


@dataclass(frozen=True)
class PhaseSpec(_Tables):
    """A grid of engine noise x staleness (from the profile) for several methods."""

    methods: tuple[str, ...]
    config: Mapping[str, Any]
    quick: GridProfile
    full: GridProfile
    name: str = "phase_diagram"
    world: World = SIMULATOR


@dataclass(frozen=True)
class SensitivitySpec(_Tables):
    """Final reward against each method's threshold (``deltas``: method -> values) at several
    engine-noise levels."""

    config: Mapping[str, Any]
    noise_std: tuple[float, ...]
    deltas: Mapping[str, tuple[float, ...]]
    quick: Profile
    full: Profile
    name: str = "threshold_sensitivity"
    world: World = SIMULATOR


@dataclass(frozen=True)
class ReplaySpec(_Profiled):
    """A simulator run of one method saved as a token log and replayed like a real one."""

    method: str
    config: Mapping[str, Any]
    quick: Profile
    full: Profile
    prefix: str = "replay_sim_"
    world: World = SIMULATOR

    def file(self, table: str) -> str:
        """The name of one of the replay's tables: ``regions_by_mu.csv``, ``objectives.csv``, ``replay.json``."""
        return f"{self.prefix}{table}"


@dataclass(frozen=True)
class LabSpec(_Profiled):
    """The tiny transformer lab's comparison and the replay of some of its token logs."""

    quick: LabProfile
    full: LabProfile
    objectives: tuple[str, ...] = LAB_OBJECTIVES
    precisions: tuple[str, ...] = LAB_PRECISIONS
    replay_objective: str = "drpo"
    replay_precisions: tuple[str, ...] = ("bf16", "fp8")
    summary_file: str = "lm_summary.csv"

    def replay_prefix(self, precision: str) -> str:
        return f"replay_lm_{precision}_"


@dataclass(frozen=True)
class ArenaProfile(Profile):
    """A profile of the arena: also how often it evaluates on held-out prompts, and which
    contestants (labels) run in the control settings (None: the spec's controls)."""

    eval_every: int = 10
    controls: tuple[str, ...] | None = None
    control_seeds: int | None = None
    """How many of the seeds the control settings run (None: all); the sanity test runs them all."""

    def seeds_for(self, setting: ArenaSetting) -> list[int]:
        """The seeds a setting runs: all for the sanity test, the first ``control_seeds`` for a control."""
        seeds = self.seed_list
        return seeds[: self.control_seeds] if setting.controls and self.control_seeds else seeds


@dataclass(frozen=True)
class ArenaSetting:
    """One setting of the arena, run as one cell: its engine's precision, its learning rate as a
    multiple of the spec's, MoE and routing replay, and how widely the learner's reward scales
    spread across the task's keys (decades; :attr:`drpo_sim.arena.train.ArenaConfig.reward_scale_spread`).
    ``controls``: only the control contestants run (``only``: only those of them, by label, in the
    full profile)."""

    name: str
    title: str
    precision: str = "bf16"
    lr_scale: float = 1.0
    moe: bool = False
    routing_replay: bool = False
    controls: bool = True
    only: tuple[str, ...] | None = None
    reward_scale_spread: float = 0.0

    def config(self, config: ArenaConfig, base: BaseModelConfig, profile: ArenaProfile,
               n_experts: int) -> ArenaConfig:
        """``config`` with this setting's changes on ``base`` (MoE with ``n_experts``), for ``profile``."""
        if self.moe:
            base = dataclasses.replace(base, model=dataclasses.replace(base.model, n_experts=n_experts))
        return dataclasses.replace(config, base=base, precision=self.precision, lr=config.lr * self.lr_scale,
                                   routing_replay=self.routing_replay, reward_scale_spread=self.reward_scale_spread,
                                   steps=profile.steps, eval_every=profile.eval_every)


@dataclass(frozen=True)
class ArenaSpec(_Profiled):
    """The arena's sanity test and its controls: every setting x contestant x seed."""

    quick: ArenaProfile
    full: ArenaProfile
    base: BaseModelConfig
    """The calibrated base model (``arena_calibration.json`` records how it was chosen)."""
    config: ArenaConfig
    """Everything else; its ``base``, ``precision``, ``lr`` and ``steps`` are set per setting and profile."""
    contestants: tuple[Contestant, ...]
    controls: tuple[str, ...]
    """Labels of the contestants run in the control settings."""
    settings: tuple[ArenaSetting, ...]
    n_experts: int = 4
    sanity_figure: str = "sanity_test"
    control_figures: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("arena_precision", ("fp32", "bf16", "fp16", "fp8")),
        ("arena_lr", ("fp32", "bf16", "bf16_lr_low", "bf16_lr_high", "fp32_lr_high")),
        ("arena_moe", ("bf16", "moe", "moe_replay")),
    )
    """Each figure of the control contestants: its name and the settings it sets side by side."""
    grad_share_figure: str = "arena_grad_share"
    events_figure: str = "arena_order_of_events"
    data_file: str = "arena.parquet"
    summary_file: str = "sanity_summary.csv"
    events_file: str = "arena_order_of_events.csv"
    seeds_file: str = "arena_seeds.csv"
    calibration_file: str = CALIBRATION_FILE
    world: World = ARENA

    def __post_init__(self) -> None:
        labels = [c.label for c in self.contestants]
        if len(set(labels)) != len(labels):
            raise ValueError(f"ArenaSpec: duplicate contestant labels {labels}")
        for name in (*self.controls, *(self.quick.controls or ()), *(self.full.controls or ())):
            if name not in labels:
                raise ValueError(f"ArenaSpec: control {name!r} is not a contestant ({', '.join(labels)})")
        for setting in self.settings:
            for name in setting.only or ():
                if name not in self.controls:
                    raise ValueError(f"ArenaSpec: setting {setting.name!r} runs {name!r}, which is not a control")
        names = [s.name for s in self.settings]
        if len(set(names)) != len(names):
            raise ValueError(f"ArenaSpec: duplicate setting names {names}")
        for figure, chosen in self.control_figures:
            for name in chosen:
                if name not in names:
                    raise ValueError(f"ArenaSpec: figure {figure!r} shows setting {name!r}, which is not declared")

    @property
    def figures(self) -> tuple[str, ...]:
        return (self.sanity_figure, *(name for name, _ in self.control_figures), self.grad_share_figure,
                self.events_figure)

    def setting(self, name: str) -> ArenaSetting:
        for s in self.settings:
            if s.name == name:
                return s
        raise ValueError(f"unknown arena setting {name!r}; valid: {', '.join(s.name for s in self.settings)}")

    def config_for(self, setting: ArenaSetting, profile: str) -> ArenaConfig:
        """The full configuration of one setting in ``profile``."""
        return setting.config(self.config, self.base, self.profile(profile), self.n_experts)

    def contestants_for(self, setting: ArenaSetting, profile: str) -> tuple[Contestant, ...]:
        if not setting.controls:
            return self.contestants
        names = self.profile(profile).controls or self.controls
        if setting.only is not None and profile == "full":
            names = [n for n in names if n in setting.only]
        return tuple(c for c in self.contestants if c.label in names)


@dataclass(frozen=True)
class ArenaComparisonSpec(_Tables):
    """Contestants compared across arena settings (every contestant in every setting, on every
    seed of the profile), on the arena's calibrated base model: one figure of their held-out reward,
    mismatch and gradient norm per setting, and the tables ``<name>.parquet`` (every run's steps),
    ``<name>_summary.csv`` (one row per setting and contestant, :func:`drpo_sim.summaries.arena_summary`)
    and ``<name>_seeds.csv``."""

    name: str
    title: str
    quick: ArenaProfile
    full: ArenaProfile
    base: BaseModelConfig
    config: ArenaConfig
    contestants: tuple[Contestant, ...]
    settings: tuple[ArenaSetting, ...]
    world: World = ARENA
    n_experts: int = 4

    def __post_init__(self) -> None:
        labels = [c.label for c in self.contestants]
        if len(set(labels)) != len(labels):
            raise ValueError(f"ArenaComparisonSpec {self.name}: duplicate contestant labels {labels}")
        names = [s.name for s in self.settings]
        if len(set(names)) != len(names):
            raise ValueError(f"ArenaComparisonSpec {self.name}: duplicate setting names {names}")
        for setting in self.settings:
            if setting.controls or setting.only is not None:
                raise ValueError(f"ArenaComparisonSpec {self.name}: setting {setting.name!r} runs every contestant "
                                 "(controls=False, only=None)")

    @property
    def data_file(self) -> str:
        """The runs' per-step table (:mod:`drpo_sim.arena.train`), as the arena's own."""
        return f"{self.name}.parquet"

    @property
    def figures(self) -> tuple[str, ...]:
        return (self.name,)

    def config_for(self, setting: ArenaSetting, profile: str) -> ArenaConfig:
        """The full configuration of one setting in ``profile``."""
        return setting.config(self.config, self.base, self.profile(profile), self.n_experts)

    def contestants_for(self, setting: ArenaSetting, profile: str) -> tuple[Contestant, ...]:
        """Every contestant runs in every setting."""
        return self.contestants
