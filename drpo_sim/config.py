"""Every default of drpo_sim, declared once, and the one rule for combining configuration.

Whatever names a default imports it from here: the objective lists a command falls back to, the
engine-noise presets, the profiles of the pipeline, the verdict names of the claims and the image
formats. Nothing here imports the rest of the package, so every layer may use it.

How a simulation's configuration is assembled (:func:`resolve`)::

    defaults  <  experiment file  <  --preset  <  command-line flags

Later sources override earlier ones, field by field. ``drpo-sim simulate`` and sweep files
(:mod:`drpo_sim.run.sweep`) both resolve through that one function.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# ----------------------------------------------------------------------------------------------
# objective lists

#: The five objectives of the DRPO paper's Figure 3 (Yao et al. 2026): the default of
#: ``drpo-sim simulate``, of the explorer and of the simulation figures.
PAPER_METHODS: tuple[str, ...] = ("pg_is", "grpo", "spo", "dppo_tv", "drpo")

#: The objectives a token-log replay evaluates by default (``drpo-sim replay``): the papers'
#: methods with plain PPO, CISPO and DPPO's KL variant beside them.
REPLAY_OBJECTIVES: tuple[str, ...] = ("pg_is", "ppo", "grpo", "cispo", "spo", "dppo_tv", "dppo_kl", "drpo")

#: The objectives the tiny transformer lab compares by default (``drpo-sim lm compare``).
LAB_OBJECTIVES: tuple[str, ...] = ("pg_is", "grpo", "dppo_tv", "drpo")

#: The lab's engine precisions compared by default (fp32 is the on-policy control).
LAB_PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp8")

# ----------------------------------------------------------------------------------------------
# the simulator's engine

#: Engine-noise presets of the simulator, calibrated against the published mismatch sizes
#: (docs/reference.md, "Published sizes"; :func:`drpo_sim.offpolicy.calibration` re-measures them).
#: On a Zipf(1.1) policy over 32,768 tokens: ``bf16`` gives mean ``abs(pi - mu)`` about 0.0014
#: (healthy runs: below 0.005), a mean log-ratio drift of about -1e-3 nats per token (published
#: for BF16) and ratios within about [0.91, 1.09] for ``mu < 0.2``; ``fp8`` widens that ratio
#: spread to about [0.72, 1.32] (published: roughly [0.8, 1.3]) with mean ``abs(pi - mu)`` about 0.003.
NOISE_PRESETS: dict[str, dict[str, float | str]] = {
    "bf16": {"noise_std": 0.05, "precision": "bf16"},
    "fp8": {"noise_std": 0.1, "precision": "fp8_e4m3"},
}

# ----------------------------------------------------------------------------------------------
# the pipeline

#: The profiles of every analysis: ``quick`` (what the tests and the README's first command run,
#: minutes on two cores) and ``full`` (the committed results, about an hour).
PROFILES: tuple[str, ...] = ("quick", "full")

#: The verdicts a claim can get (:mod:`drpo_sim.paper.claims`).
VERDICTS: tuple[str, ...] = ("supported", "not supported", "inconclusive", "not testable here")

#: Image formats a figure can be written in.
IMAGE_FORMATS: tuple[str, ...] = ("png", "pdf", "svg")


def check_positive_ints(config: Any, *names: str) -> None:
    """``ValueError`` naming the first field of ``config`` among ``names`` that is not a positive
    integer (a bool is not one): ``"WalkTask.vocab_size must be a positive integer, got 0"``."""
    for name in names:
        v = getattr(config, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{type(config).__name__}.{name} must be a positive integer, got {v!r}")


def check_profile(profile: str) -> str:
    """``profile`` if it is one of :data:`PROFILES`, else a ``ValueError`` naming the valid ones."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; valid: {', '.join(PROFILES)}")
    return profile


# ----------------------------------------------------------------------------------------------
# parsing values given as text (command lines, experiment files)


def parse_formats(text: str) -> tuple[str, ...]:
    """``"png,pdf"`` -> ``("png", "pdf")``; ``ValueError`` for anything not in :data:`IMAGE_FORMATS`."""
    fmts = tuple(f.strip().lower() for f in text.split(",") if f.strip())
    bad = [f for f in fmts if f not in IMAGE_FORMATS]
    if bad or not fmts:
        raise ValueError(
            f"--formats: unsupported {', '.join(bad) or 'empty list'}; choose from {', '.join(IMAGE_FORMATS)}"
        )
    return fmts


def parse_names(text: str | Iterable[str]) -> list[str]:
    """A comma-separated list (or an iterable) of names, stripped, empty entries dropped."""
    items = text.split(",") if isinstance(text, str) else [str(t) for t in text]
    return [n.strip() for n in items if n.strip()]


def parse_value(text: str) -> Any:
    """A command-line value: int, float, true/false, none, or the string itself."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_param(spec: str) -> tuple[str, str, Any]:
    """``"drpo.delta=2.5"`` -> ``("drpo", "delta", 2.5)``."""
    head, eq, value = spec.partition("=")
    method, dot, name = head.strip().partition(".")
    if not (eq and dot and method and name):
        raise ValueError(f"--param {spec!r}: expected METHOD.NAME=VALUE, e.g. drpo.delta=2.5")
    return method, name.strip(), parse_value(value)


def parse_params(specs: Iterable[str] | None) -> dict[str, dict[str, Any]]:
    """``["drpo.delta=2.5", "spo.eps=5"]`` -> ``{"drpo": {"delta": 2.5}, "spo": {"eps": 5}}``."""
    params: dict[str, dict[str, Any]] = {}
    for text in specs or []:
        method, name, value = parse_param(text)
        params.setdefault(method, {})[name] = value
    return params


# ----------------------------------------------------------------------------------------------
# precedence


def resolve(file: Mapping[str, Any] | None = None, preset: str | None = None,
            flags: Mapping[str, Any] | None = None, *, where: str = "--preset") -> dict[str, Any]:
    """Flat configuration overrides in the one order of precedence:
    defaults < ``file`` < ``preset`` < ``flags``.

    ``file`` and ``flags`` are flat ``{field: value}`` overrides (a flag left unset is absent or
    ``None``); ``preset`` names an entry of :data:`NOISE_PRESETS`. The defaults are the
    configuration class's own, applied by whoever builds it from the result
    (:meth:`drpo_sim.sim.SimConfig.from_flat`). ``where`` names the preset's origin in the error.
    """
    out = dict(file or {})
    if preset is not None:
        if preset not in NOISE_PRESETS:
            raise ValueError(f"{where} {preset!r}: valid presets are {', '.join(NOISE_PRESETS)}")
        out.update(NOISE_PRESETS[preset])
    out.update({k: v for k, v in (flags or {}).items() if v is not None})
    return out
