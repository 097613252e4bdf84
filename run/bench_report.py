"""The benchmarks' report: rows of run/bench_*.py (``--json``) merged into one Markdown table and JSON file.

    python run/bench_report.py OUT_DIR/*.json --md run/bench_results.md --json run/bench_results.json

is what ``run/bench_all.sh`` runs last; earlier reports can be merged too (their rows keep their commit).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from run.bench_common import machine  # noqa: E402


def _fmt(x, digits=2):
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}f}" if abs(x) < 1e5 else f"{x:.3g}"
    return str(x)


def _settings_text(s: dict) -> str:
    keys = ("batch", "group", "prompt_len", "new_tokens", "response_len", "seq_len", "epochs", "mini_batch", "beta", "lr",
            "jit_level", "graph_kernel", "kernels", "recompute", "threads", "ms_threads")
    return " ".join(f"{k}={s[k]}" for k in keys if s.get(k) not in (None, ""))


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# mindrlhf benchmarks ({m['date']})", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB; commit `{m['commit']}`; "
             f"load average (1, 5, 15 min) {m['load_average']}"
             + (f" at start, {report['load_average_end']} at end." if report.get("load_average_end") else "."),
             f"Versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items())}.", "",
             "speedup = mindrlhf / peer on the row's rate (> 1: mindrlhf faster). Times are seconds of a "
             "steady iteration or step (after warm-up); `first` is the warm-up one (compilation included).", "",
             "CPU s = process CPU seconds of the same step (all threads): less sensitive to other load than "
             "wall time.", "",
             "| bench | size | settings | peer | ours rate | peer rate | speedup | ours s | peer s | ours CPU s "
             "| peer CPU s "
             "| ours first s | ours phases s (gen / score / train) | peer phases s | ours RSS MB | peer RSS MB "
             "| load during |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        o, p = r.get("ours", {}), r.get("peer", {})
        metric = r.get("speed_metric", "tokens_per_s")

        def phases(d):
            if "time_generate" not in d:
                return "—"
            return " / ".join(_fmt(d.get(k)) for k in ("time_generate", "time_score", "time_train"))

        err = "; ".join(f"{side}: {d['error']}" for side, d in (("ours", o), ("peer", p)) if "error" in d)
        lines.append("| " + " | ".join([
            r["bench"], r["size"], _settings_text(r.get("settings", {})), r.get("peer_name", ""),
            f"{_fmt(o.get(metric), 1)} {metric.replace('_per_s', '/s')}", _fmt(p.get(metric), 1),
            _fmt(r.get("speedup")), _fmt(o.get("step_s")), _fmt(p.get("step_s")), _fmt(o.get("cpu_step_s")),
            _fmt(p.get("cpu_step_s")), _fmt(o.get("first_s")),
            phases(o), phases(p), _fmt(o.get("peak_rss_mb"), 0), _fmt(p.get("peak_rss_mb"), 0),
            _fmt(max(o.get("load_average_end", [0])[0], p.get("load_average_end", [0])[0]))
        ]) + " |" + (f" {err}" if err else ""))
    notes = [n for r in report["rows"] for n in r.get("notes", [])]
    if notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in dict.fromkeys(notes)]
    return "\n".join(lines) + "\n"


def merge(files: list) -> dict:
    """One report from benchmark JSON files (or earlier reports: their rows keep the commit they measured)."""
    rows, vers = [], {}
    for path in files:
        with open(path, encoding="utf-8") as f:
            part = json.load(f)
        for row in part.get("rows", []):
            if "machine" in part:
                row.setdefault("commit", part["machine"]["commit"])
            rows.append(row)
        vers.update(part.get("versions", {}))
    report = {"machine": machine(), "versions": vers, "rows": rows}
    commits = list(dict.fromkeys(r["commit"] for r in rows if "commit" in r))
    if commits:
        report["machine"]["commit"] = ", ".join(commits)
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", help="--json files of run/bench_*.py, or earlier reports")
    parser.add_argument("--md", required=True)
    parser.add_argument("--json", required=True)
    parser.add_argument("--start-load", default="", help="load average when the run started (bench_all.sh passes it)")
    args = parser.parse_args()
    report = merge(args.files)
    if args.start_load:
        report["load_average_end"] = report["machine"]["load_average"]
        report["machine"]["load_average"] = [float(x) for x in args.start_load.split()]
    with open(args.json, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, default=float)
    with open(args.md, "w", encoding="utf-8") as f:
        f.write(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
