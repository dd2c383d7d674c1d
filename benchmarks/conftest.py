"""Benchmark suite configuration.

    pytest benchmarks/ --benchmark     full sizes, timed, report written to benchmarks/results/
    pytest benchmarks/                 tiny sizes, each benchmark run once untimed (smoke test)

Every benchmark file compares an op with its baselines inside one pytest-benchmark
group, so ratios come from the same run on the same machine. Benchmarks put their
physical units into `benchmark.extra_info` (e.g. "bytes", "GB/s", "peak_extra_MiB"),
and the report prints them beside the timings.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re

import pytest
import torch

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def pytest_addoption(parser):
    parser.addoption(
        "--benchmark",
        action="store_true",
        default=False,
        help="run the benchmarks at full size, timed, and write a report to benchmarks/results/",
    )


def pytest_configure(config):
    if not config.getoption("--benchmark"):
        # Smoke mode: the `benchmark` fixture calls the function once, untimed.
        config.option.benchmark_disable = True


@pytest.fixture(scope="session")
def full(request) -> bool:
    """True under `--benchmark`: use the sizes the issues name; False: tiny smoke sizes."""
    return request.config.getoption("--benchmark")


def device_name() -> str:
    """A readable name of the machine the benchmarks ran on (GPU name if CUDA is used)."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    return f"CPU {model} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"CPU {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]


def _fmt_time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3f} {unit}"
    return f"{seconds * 1e9:.1f} ns"


def _markdown(rows: list[dict], header: dict) -> str:
    lines = [
        f"# Benchmark report: {header['device']}",
        "",
        f"- last run: {header['date']}, `{header['command']}`",
        "- each group's rows come from one run (its date is under the table); rerun a file",
        "  alone and only its groups are replaced",
        f"- torch {header['torch']}, python {header['python']}, threads {header['threads']}",
        "",
    ]
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["group"] or "(no group)", []).append(row)
    for group, members in groups.items():
        members.sort(key=lambda r: r["mean"])
        fastest = members[0]["mean"]
        extra_keys = sorted({k for r in members for k in r["extra_info"]})
        lines += [f"## {group}", ""]
        head = ["benchmark", "mean", "stddev", "rounds", "vs fastest"] + extra_keys
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for r in members:
            cells = [
                r["name"],
                _fmt_time(r["mean"]),
                _fmt_time(r["stddev"]),
                str(r["rounds"]),
                f"{r['mean'] / fastest:.2f}x",
            ]
            for k in extra_keys:
                v = r["extra_info"].get(k, "")
                cells.append(f"{v:.3g}" if isinstance(v, float) else str(v))
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"measured {members[0].get('date', '?')} by `{members[0].get('command', '?')}`", ""]
    return "\n".join(lines)


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    if not config.getoption("--benchmark"):
        return
    bench_session = getattr(config, "_benchmarksession", None)
    if bench_session is None or not bench_session.benchmarks:
        return
    rows = []
    for bench in bench_session.benchmarks:
        if not bench.stats:  # a benchmark that errored before timing
            continue
        stats = bench.stats
        rows.append(
            {
                "group": bench.group,
                "name": bench.name,
                "mean": stats.mean,
                "stddev": stats.stddev,
                "min": stats.min,
                "median": stats.median,
                "rounds": stats.rounds,
                "extra_info": dict(bench.extra_info),
            }
        )
    if not rows:
        return
    device = device_name()
    header = {
        "device": device,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": "pytest " + " ".join(config.invocation_params.args),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }
    os.makedirs(RESULTS_DIR, exist_ok=True)
    stem = os.path.join(RESULTS_DIR, _slug(device))
    # One report per device that accumulates: groups re-run now replace their old rows,
    # groups not run now keep theirs (each row carries the date it was measured).
    for row in rows:
        row["date"] = header["date"]
        row["command"] = header["command"]
    rerun = {row["group"] for row in rows}
    if os.path.exists(stem + ".json"):
        with open(stem + ".json") as f:
            previous = json.load(f).get("benchmarks", [])
        rows = [r for r in previous if r["group"] not in rerun] + rows
    with open(stem + ".json", "w") as f:
        json.dump({"header": header, "benchmarks": rows}, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(_markdown(rows, header))
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"benchmark report written to {stem}.md and .json")
