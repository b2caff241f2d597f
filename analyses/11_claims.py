"""REFERENCE.md's twelve claims, each put to a test (drpo_sim.claims) on the result files the
other analyses wrote; writes claims.json (number, statement, verdict, reason, numbers, sources,
figures). Run it after the others (drpo-sim reproduce does).
"""

import sys

from drpo_sim import claims
from drpo_sim.reproduce import script_main


def run(out, profile, formats):
    results = claims.claims_from_results(out)
    claims.write_claims(results, out / "claims.json")
    for r in results:
        print(f"claim {r.number:>2}: {r.verdict:<13} {r.reason}")
    return []


if __name__ == "__main__":
    sys.exit(script_main(run, __doc__))
