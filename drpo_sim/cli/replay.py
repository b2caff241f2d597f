"""``drpo-sim replay``: the per-token analysis of token logs, real, simulated or from the lab."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from drpo_sim import analysis, logs
from drpo_sim.config import REPLAY_OBJECTIVES, parse_formats, parse_names, parse_params
from drpo_sim.paper.jobs import replay_figures


def configure_replay(p: argparse.ArgumentParser) -> None:
    p.add_argument("logs", nargs="+", metavar="LOG",
                   help="token log files, run folders (searched with their subfolders) or quoted globs such as "
                        "'logs/exp_*/train_data_step*.jsonl.gz' (see --format)")
    p.add_argument("--out", required=True, help="output directory for the tables (CSV, JSON) and figures")
    p.add_argument("--format", default="auto",
                   help="log format: auto (default), tokens, nemo_rl, slime, generic, trainer_dump")
    p.add_argument("--map", metavar="OURS=THEIRS,...",
                   help="column mapping for --format generic, e.g. logp=lp,logp_behavior=engine_lp")
    p.add_argument("--group-size", type=int, help="samples per prompt group where the format does not record groups")
    p.add_argument("--on-invalid", choices=("raise", "drop"), default="raise",
                   help="bad rows: stop with an error naming them (default), or drop them (and skip empty step "
                        "files) and report how many and why")
    p.add_argument("--trust-pickles", action="store_true",
                   help="load .pt files with torch.load(weights_only=False), which reads objects such as NumPy "
                        "scalars but can run code stored in the file: only for files you trust")
    p.add_argument("--objectives", help=f"comma-separated objectives (default {','.join(REPLAY_OBJECTIVES)}); those "
                   "anchored to pi_old (minirl, decoupled_ppo, a correction) need a logp_old column in the log")
    p.add_argument("--param", action="append", metavar="METHOD.NAME=VALUE",
                   help="objective parameter, e.g. drpo.delta=2.5, or a correction of the engine's gap, e.g. "
                        "grpo.correction=tis (and its own parameters: grpo.cap=2); repeatable")
    p.add_argument("--updates", metavar="K,...", help="keep only these mini-batch updates of each step (the update "
                   "column); 0 isolates the training-inference mismatch from the policy's drift within a step")
    p.add_argument(
        "--batch-size", type=int, default=1 << 20, help="tokens per batch; bounds the memory (default 1048576)"
    )
    p.add_argument("--device", default="cpu", help="torch device: cpu (default) or cuda")
    p.add_argument("--kernels", choices=analysis.KERNELS, default="eager",
                   help="eager (default): the objectives' registry, the reference; fused: their compiled kernels "
                        "(drpo_sim.fused), faster on a long log after seconds of compilation per objective, weights "
                        "within a few ulps of the registry's")
    p.add_argument("--formats", default="png", help="comma-separated image formats (default png)")
    p.add_argument("--label", help="name of the log in the figure titles (default: the file names)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_replay)


def run_replay(args: argparse.Namespace) -> int:
    names = parse_names(args.objectives) if args.objectives else None
    objs = analysis.objective_specs(names, parse_params(args.param))
    mapping = logs.parse_mapping(args.map) if args.map else None
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    src = logs.open_log(args.logs, fmt=args.format, mapping=mapping, on_invalid=args.on_invalid,
                        batch_size=args.batch_size, group_size=1 if args.group_size is None else args.group_size,
                        weights_only=not args.trust_pickles)
    if args.trust_pickles:
        pt = [f for f in src.files if ".pt" in f.suffixes]
        print("drpo-sim replay: warning: --trust-pickles: "
              + (f"{len(pt)} .pt files are loaded with torch.load(weights_only=False), which runs any code stored in "
                 "them: use it only on files you trust" if pt else "no .pt file in this log, so it changes nothing"),
              file=sys.stderr)
    for line in src.listing_lines():
        print(line)
    t0 = time.perf_counter()
    updates = None
    if args.updates is not None:
        try:
            updates = [int(u) for u in args.updates.split(",") if u.strip()]
        except ValueError:
            raise ValueError(f"--updates {args.updates!r}: expected comma-separated update indices, e.g. 0") from None
    result = analysis.replay_log(src, objs, device=args.device, progress=not args.no_progress, updates=updates,
                                 kernels=args.kernels)
    report = src.report
    label = args.label or ", ".join(Path(p).name for p in args.logs)
    records = replay_figures(result, args.out, label=label, formats=parse_formats(args.formats),
                             wall_time_s=time.perf_counter() - t0)
    t = result.totals
    print(f"{t['tokens']:,} tokens replayed ({t['excluded_tokens']:,} with mask false"
          + (f", {t['filtered_tokens']:,} outside --updates" if t["filtered_tokens"] else "") + "), "
          f"{t['rare_share']:.1%} with mu <= {t['rare_threshold']:g}; mean |pi-mu| {t['abs_shift_mean']:.3g}, "
          f"max {t['abs_shift_max']:.3g}")
    if report:
        print(f"dropped (--on-invalid drop): {report}")
    if report.dedup:
        print(f"de-duplicated, not dropped: {report.dedup_text()}")
    if result.mismatch_only:
        print(f"mismatch only, no objective tables or figures: {t['note']}")
    else:
        cols = ["objective", "masked_frac", "attenuated_frac", "corrective_frac", "grad_mass_share",
                "rare_masked_frac", "rare_weight_min", "rare_weight_max"]
        print(result.objectives[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"{len(records)} figures and their tables in {args.out}")
    return 0
