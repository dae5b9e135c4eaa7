"""What each rule of a finished Snakemake run cost, from the run's own log.

    python benchmarks/job_costs.py .snakemake/log/<run>.snakemake.log [--rules claims empirical_fisher]

Every job's wall seconds, from the time stamp before its ``rule``/``localrule`` line to the
one before its ``Finished jobid`` line (one-second resolution: Snakemake's stamps), summed
per rule: jobs, job-seconds, longest job. Also the run's wall (first to last stamp). On 2
cores two jobs run at once, so job-seconds exceed the wall. Light rules have no benchmark
file, so this is the only record of what they cost (issue 19 measured the same way).
"""

from __future__ import annotations

import argparse
import re
from datetime import datetime
from pathlib import Path

import pandas as pd

STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
START = re.compile(r"^(?:local)?rule (\w+):$")
JOBID = re.compile(r"^\s+jobid: (\d+)$")
FINISHED = re.compile(r"^Finished jobid: (\d+) \(Rule: (\w+)\)$")


def job_seconds(log: str) -> tuple[pd.DataFrame, float]:
    """One row per finished job (rule, jobid, seconds) and the run's wall seconds."""
    now, rule, starts, rows, stamps = None, None, {}, [], []
    for line in log.splitlines():
        if m := STAMP.match(line):
            now = datetime.strptime(m[1], "%a %b %d %H:%M:%S %Y")
            stamps.append(now)
        elif m := START.match(line):
            rule = m[1]
        elif (m := JOBID.match(line)) and rule:
            starts[int(m[1])] = (rule, now)
            rule = None
        elif m := FINISHED.match(line):
            started = starts.get(int(m[1]))
            if started and started[1] and now:
                rows.append({"rule": m[2], "jobid": int(m[1]), "s": (now - started[1]).total_seconds()})
    wall = (stamps[-1] - stamps[0]).total_seconds() if stamps else 0.0
    return pd.DataFrame(rows, columns=["rule", "jobid", "s"]), wall


def per_rule(jobs: pd.DataFrame) -> pd.DataFrame:
    return jobs.groupby("rule").agg(jobs=("s", "size"), job_s=("s", "sum"), longest_s=("s", "max")).sort_values(
        "job_s", ascending=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("log", type=Path)
    ap.add_argument("--rules", nargs="*", help="also print the job-seconds of these rules together")
    args = ap.parse_args()
    jobs, wall = job_seconds(args.log.read_text())
    table = per_rule(jobs)
    print(f"run wall {wall / 60:.1f} min, {len(jobs)} jobs, {jobs.s.sum() / 60:.1f} job-minutes\n")
    print(table.to_markdown(floatfmt=".0f"))
    if args.rules:
        sel = table.loc[table.index.intersection(args.rules)]
        print(f"\n{', '.join(args.rules)}: {int(sel.jobs.sum())} jobs, {sel.job_s.sum():.0f} job-seconds")


if __name__ == "__main__":
    main()
