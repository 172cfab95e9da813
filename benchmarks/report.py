"""The benchmarks' report, read from the committed result files (no training): every run in one index, the headline
tables of ``benchmarks/README.md`` and their plots; also the markdown tables the benchmarks print.

    python benchmarks/report.py            # writes the files below and the tables of benchmarks/README.md

writes, under ``benchmarks/results/``:
    index.csv                   every run kept: run, method, labels, list, seed, machine, date, the flags that differ
                                from its recipe file today, steps, test top-1 at 10/20/30 minutes and at the end
    report/fmnist_1perc.{csv,md}   the five rows on the unseen 1% list, seeds 31 and 32: mean, spread, gain
    report/fmnist_10perc.{csv,md}  the same at 10% labels
    report/gpu_step.{csv,md}       images/s of the released recipes' step on one GPU, each precision
    report/gpu_levers.{csv,md}     images/s per step lever (H200)
    report/data_pipeline.{csv,md}  the data pipeline per core against the release's composition
    report/*.png                   one plot per headline (needs matplotlib)

Sources: a run folder (``results.json``, ``evals.jsonl``, ``stdout.log``: the command the benchmark launched,
``train.log``: date and precision), the rows of each folder's ``results.csv`` whose run folder was not kept, the
probe curves of ``fmnist_1perc_probes/probes.csv``, the logs of the GPU machines, and
``measured_without_run_files.md`` for the tables whose logs were not kept. A run listed twice (a row copied into
another folder's table) is indexed once. The machine is the one the run's log names: the 2-core CPU in bf16 (AVX-512)
or in fp32 (AVX2-only, ``--use_bf16 auto``).
"""
from __future__ import annotations

import csv
import json
import re
import statistics
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
REPORT = RESULTS / "report"
README = Path(__file__).resolve().parent / "README.md"  # its tables sit between <!-- table: NAME --> and <!-- end -->
TIME_POINTS_MIN = (10, 20, 30)
INDEX_COLUMNS = ("run", "method", "labels", "list", "seed", "machine", "date", "flags", "steps", "top1_10min",
                 "top1_20min", "top1_30min", "top1_end", "train_min", "source")
ROWS = ("supervised_strong", "supervised", "fixmatch", "suave", "daino")  # the headline tables' five rows, in order
# Each headline row: the run of each seed (index run ids). Seeds pair runs of one recipe; where a pair's runs were
# made on different days the table's `made` column says so.
FMNIST_HEADLINES = {
    "fmnist_1perc": {
        "title": "Fashion-MNIST, 1% labels (600 images), the unseen list, 30 min",
        "runs": {name: {31: f"fmnist_1perc_split1/{name}", 32: f"fmnist_1perc_split1_seed32/{name}"} for name in ROWS},
    },
    "fmnist_10perc": {
        "title": "Fashion-MNIST, 10% labels (6,000 images), 30 min",
        "runs": {"supervised_strong": {31: "fmnist_10perc/supervised_strong", 32: "fmnist_10perc_seed32/supervised_strong"},
                 "supervised": {31: "fmnist_10perc/supervised", 32: "fmnist_10perc_seed32_sameday/supervised"},
                 "fixmatch": {31: "fmnist_10perc_fixmatch_bn/fixmatch", 32: "fmnist_10perc_seed32_sameday/fixmatch"},
                 "suave": {31: "fmnist_10perc/suave", 32: "fmnist_10perc_seed32/suave"},
                 "daino": {31: "fmnist_10perc/daino", 32: "fmnist_10perc_seed32_sameday/daino"}},
    },
}
GPU_LOGS = {"H200": RESULTS / "gpu_check_h200" / "gpu_check.log"}  # throughput.py's tables, recipe precision first
TRANSCRIBED = RESULTS / "measured_without_run_files.md"


# ------------------------------------------------------------------------------------------- markdown tables
def markdown_table(rows: list[dict], digits: int = 1) -> str:
    """One markdown table: the dicts' keys are the columns (floats with ``digits`` decimals)."""
    columns = list(rows[0])
    cells = [[f"{r[c]:.{digits}f}" if isinstance(r[c], float) else str(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def print_table(rows: list[dict], digits: int = 1) -> None:
    """One markdown table (``markdown_table``), then a blank line."""
    print(markdown_table(rows, digits))


def parse_markdown_tables(text: str) -> list[list[dict]]:
    """The tables of a log or markdown file, each a list of {column: cell} (cells stripped, ``**`` dropped)."""
    tables, block = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append([c.strip().replace("**", "") for c in line.strip().strip("|").split("|")])
            continue
        if len(block) > 2:
            tables.append([dict(zip(block[0], row)) for row in block[2:]])
        block = []
    return tables


# ------------------------------------------------------------------------------------------------- index
def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _machine_and_date(run_dir: Path) -> tuple[str, str]:
    """The machine (from the precision the run's train.log names) and the date it started."""
    log = run_dir / "train.log"
    if not log.is_file():
        return "—", "—"
    text = log.read_text()
    found = re.search(r"training \w+ for .* iterations \(([^)]*)\)", text)
    precision = found.group(1) if found else ""
    machine = ("2-core CPU, AVX2 (fp32)" if "no native bf16" in precision
               else "2-core CPU, AVX-512 (bf16)" if precision.startswith("bf16") else precision or "—")
    return machine, text[:10]


def _run_row(folder: Path, key: str, run_dir: Path) -> dict:
    """An index row from a kept run folder."""
    from fmnist_benchmark import (RECIPES, Stage, accuracy_at, curve_of, list_label, ran_command, read_jsonl,
                                  recipe_changes)
    results = json.loads((run_dir / "results.json").read_text())
    command = ran_command(run_dir)
    flags = command[1] if command else {}
    recipe = RECIPES.get(key, RECIPES.get(key.split("_")[0], [None]))[0]
    budget = float(flags.get("--time_budget_min", ("30",))[0]) if command else 0.0
    curve = curve_of([Stage(recipe or "", run_dir, budget, results=results,
                            evals=read_jsonl(run_dir / "evals.jsonl"))], classify_from=0)
    labels = flags.get("--labels_perc", ("1",))[0]
    machine, date = _machine_and_date(run_dir)
    return {"run": f"{folder.name}/{key}", "method": key.split("_ema")[0] if key in RECIPES or recipe else
            results.get("method", key), "labels": f"{labels}%",
            "list": list_label(flags.get("--subset_file", (None,))[0], "", labels),
            "seed": flags.get("--seed", ("—",))[0], "machine": machine, "date": date,
            "flags": (recipe_changes(recipe, flags) if recipe else "") if command else "(command not recorded)",
            "steps": str(results.get("iterations", "—")),
            **{f"top1_{t}min": _fmt(accuracy_at(curve, t, 0.5)) if t <= budget else "—" for t in TIME_POINTS_MIN},
            "top1_end": _fmt(results.get("val_acc1")), "train_min": _fmt(results.get("train_minutes")),
            "source": "run files" if command else "run files (fixed-step run, launched by hand)",
            "_end": results.get("val_acc1")}


def _table_row(folder: Path, row: dict) -> dict:
    """An index row from a ``results.csv`` row whose run folder was not kept."""
    from fmnist_benchmark import row_key
    key = row_key(row)
    end = row.get("top1_end", "—")
    return {"run": f"{folder.name}/{key}", "method": key,
            "labels": row.get("labels", "—"),
            "list": (row.get("labelled_list") or "subsets/1percent.txt").split(" (conversion")[0],
            "seed": row.get("seed", "—"), "machine": "—", "date": "—", "flags": "(command not recorded)",
            "steps": row.get("iterations", "—"),
            **{f"top1_{t}min": row.get(f"top1_{t}min", "—") or "—" for t in TIME_POINTS_MIN},
            "top1_end": end, "train_min": row.get("train_min", "—"),
            "source": "results.csv row (run folder not kept)", "_end": float(end) if end not in ("", "—") else None}


def _probe_rows(path: Path) -> list[dict]:
    """Index rows of the 30-minute probe curves (``probes.csv``: one evaluation a line; the last is the end)."""
    from fmnist_benchmark import accuracy_at
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for row in csv.DictReader(open(path, newline="")):
        groups.setdefault((row["method"], row["flags"], row["seed"]), []).append(row)
    rows = []
    for (method, flags, seed), evals in groups.items():
        curve = [(float(e["train_minutes"]), float(e["val_acc1"])) for e in evals]
        last = evals[-1]
        budget = curve[-1][0] if "stopped" in last["note"] else 30.0  # a run stopped by hand has no later point
        rows.append({"run": f"{path.parent.name}/{method} {flags}", "method": method, "labels": "1%",
                     "list": "subsets/1percent.txt", "seed": seed, "machine": "—", "date": "—",
                     "flags": f"{flags} (added to the recipe of the time)", "steps": last["iteration"],
                     **{f"top1_{t}min": _fmt(accuracy_at(curve, t, 0.5)) if t <= budget + 0.5 else "—"
                        for t in TIME_POINTS_MIN},
                     "top1_end": _fmt(curve[-1][1]), "train_min": _fmt(curve[-1][0]),
                     "source": "probes.csv curve" + (f"; {last['note']}" if last["note"] else ""),
                     "_end": curve[-1][1]})
    return rows


def collect_runs(results: Path = RESULTS) -> list[dict]:
    """Every run of ``results``: the run folders, then the table rows and probe curves that are not a copy of a run
    already listed (same method, labels, seed, steps and end accuracy: a row copied into another folder's table)."""
    from fmnist_benchmark import read_rows, row_key
    folders = sorted(p for p in results.iterdir() if p.is_dir() and p.name.startswith(("fmnist", "layout")))
    kept = [_run_row(folder, run.name, run) for folder in folders
            for run in sorted(folder.iterdir()) if (run / "results.json").is_file()]
    have = {row["run"] for row in kept}
    copies = [_table_row(folder, row) for folder in folders for row in read_rows(folder / "results.csv")
              if f"{folder.name}/{row_key(row)}" not in have]
    copies += [row for folder in folders if (folder / "probes.csv").is_file()
               for row in _probe_rows(folder / "probes.csv")]

    def same(row: dict) -> tuple:
        return row["method"], row["labels"], str(row["seed"]), str(row["steps"]), row["top1_end"]
    seen = {same(row) for row in kept}
    for row in copies:
        if same(row) not in seen:
            seen.add(same(row))
            kept.append(row)
    return kept


def write_rows(rows: list[dict], path: Path, columns: tuple[str, ...] | None = None) -> None:
    """``rows`` as a CSV file (the columns given, or every key not starting with ``_``)."""
    columns = columns or tuple(k for k in rows[0] if not k.startswith("_"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


# --------------------------------------------------------------------------------------- headline tables
def fmnist_headline(index: list[dict], runs: dict[str, dict[int, str]]) -> list[dict]:
    """The five rows over two seeds: each seed's end accuracy, their mean and spread (max - min), the mean's gain
    over the strongest supervised recipe's mean, steps, dates and machine (from the unrounded accuracies)."""
    from fmnist_benchmark import LABELS
    by_run = {row["run"]: row for row in index}
    missing = [run for seeds in runs.values() for run in seeds.values() if run not in by_run]
    if missing:
        raise SystemExit(f"the headline runs {missing} are not in {RESULTS}: restore them or edit FMNIST_HEADLINES")
    means = {name: statistics.mean(by_run[run]["_end"] for run in seeds.values()) for name, seeds in runs.items()}
    table = []
    for name, seeds in runs.items():
        rows = [by_run[seeds[seed]] for seed in sorted(seeds)]
        ends = [row["_end"] for row in rows]
        gain = "—" if name == "supervised_strong" else f"{round(means[name] - means['supervised_strong'], 1) + 0:+.1f}"
        table.append({"row": LABELS[name], **{f"seed {s}": f"{e:.1f}" for s, e in zip(sorted(seeds), ends)},
                      "mean": f"{means[name]:.1f}", "spread": f"{max(ends) - min(ends):.1f}",
                      "gain over strongest supervised": gain,
                      "steps": " / ".join(f"{int(row['steps']):,}" for row in rows),
                      "made": " / ".join(row["date"] for row in rows),
                      "runs": " / ".join(row["run"] for row in rows)})
    return table


def curves_of(runs: dict[str, dict[int, str]]) -> dict[str, dict[int, list[tuple[float, float]]]]:
    """Accuracy against training minutes of each headline run (evals.jsonl and the end; the 10/20/30-minute
    points of the table for a run whose folder was not kept)."""
    from fmnist_benchmark import read_jsonl, read_rows, row_key
    curves: dict[str, dict[int, list[tuple[float, float]]]] = {}
    for name, seeds in runs.items():
        for seed, run in seeds.items():
            run_dir = RESULTS / run
            if (run_dir / "results.json").is_file():
                results = json.loads((run_dir / "results.json").read_text())
                points = [(float(e["train_minutes"]), float(e["val_acc1"])) for e in read_jsonl(run_dir / "evals.jsonl")
                          if "val_acc1" in e] + [(float(results["train_minutes"]), float(results["val_acc1"]))]
            else:
                row = next(r for r in read_rows(run_dir.parent / "results.csv") if row_key(r) == run_dir.name)
                points = [(float(t), float(row[f"top1_{t}min"])) for t in TIME_POINTS_MIN
                          if row.get(f"top1_{t}min") not in (None, "", "—")]
            curves.setdefault(name, {})[seed] = sorted(set(points))
    return curves


def gpu_step_rows() -> list[dict]:
    """Images/s and ms of the released recipes' step on one GPU, each precision: the bare step of the throughput
    benchmark (a fixed batch without the mixed views) and the full step of a training run through the launcher or
    torchrun (``scripts/gpu_check.sh``, means over the last log window; ``data_share.py``: one epoch of JPEGs)."""
    rows = []
    h100 = next(t for t in parse_markdown_tables(TRANSCRIBED.read_text()) if {"precision", "network ms"} <= set(t[0]))
    for row in h100:
        rows.append({"step": "bare", "method": row["method"].split(" (")[0],
                     "precision": row["precision"].replace(" + GradScaler", ""), "GPU": "H100",
                     "ms": row["step ms"], "images/s": row["images/s"]})
    h200 = GPU_LOGS["H200"].read_text()
    for i, table in enumerate(t for t in parse_markdown_tables(h200) if "network ms" in t[0]):
        for row in table:  # the recipe's precision first, then bf16
            precision = row["precision"].replace(" autocast", "").replace(" + GradScaler", "")
            rows.append({"step": "bare", "method": row["method"].capitalize(),
                         "precision": precision + (" (recipe)" if i == 0 else ""), "GPU": "H200",
                         "ms": row["step ms"], "images/s": f"{float(row['images/s']):.0f}"})
    full = next(t for t in parse_markdown_tables(TRANSCRIBED.read_text()) if "exit" in t[0])
    for row in full:  # "Suave fp16, torchrun + NCCL"
        method, precision = row[next(iter(row))].split(",")[0].split()
        rows.append({"step": "full (gpu_check.sh, 120 steps)", "method": method, "precision": precision,
                     "GPU": "H100", "ms": f"{float(row['step s']) * 1000:.0f}", "images/s": row["images/s"]})
    for method, precision, step_s, img_s in re.findall(
            r"== (suave|daino)_(fp16|bf16) .*?step_s ([\d.]+)\s+img_s ([\d.]+)", h200, re.S):
        rows.append({"step": "full (gpu_check.sh, 120 steps)", "method": method.capitalize(), "precision": precision,
                     "GPU": "H200", "ms": f"{float(step_s) * 1000:.0f}", "images/s": f"{float(img_s):.0f}"})
    share = next(t for t in parse_markdown_tables((RESULTS / "gpu_speed_h200" / "data_share.log").read_text()))
    for row in share:
        if row["pipeline"] == "reference":
            rows.append({"step": f"full (data_share.py, {row['cores']} cores)", "method": row["method"].capitalize(),
                         "precision": "fp16 (recipe)", "GPU": "H200", "ms": row["step ms"],
                         "images/s": f"{float(row['images/s']):.0f}"})
    return rows


def gpu_lever_rows() -> list[dict]:
    """Images/s per cumulative step lever on one H200, from the lines ``gpu_speed.log`` prints: its part 1 in the
    recipes' precisions (Suave fp16, Daino fp32), part 1b in bf16."""
    text = (RESULTS / "gpu_speed_h200" / "gpu_speed.log").read_text()
    recipe, bf16 = text.split("== 1. ")[1].split("== 1b.")
    line = re.compile(r"^\s+(suave|daino)\s+(.+?)\s{2,}([\d.]+) ms\s+([\d.]+) images/s\s+x([\d.]+)$", re.M)
    rows = []
    for part, precision in ((recipe, None), (bf16.split("\n==")[0], "bf16")):
        for method, lever, step_ms, img_s, ratio in line.findall(part):
            rows.append({"method": method.capitalize(),
                         "precision": precision or {"suave": "fp16", "daino": "fp32"}[method] + " (recipe)",
                         "lever": lever, "step ms": step_ms, "images/s": f"{float(img_s):.0f}", "x before": ratio})
    return sorted(rows, key=lambda r: (r["method"] != "Suave", "bf16" in r["precision"]))


def data_pipeline_rows() -> list[dict]:
    """Images/s per core of each pipeline variant against the release's composition (``reference``), on the 2-core
    CPU and on the H200 machine's cores."""
    sources = {"2-core CPU": RESULTS / "data_pipeline" / "cpu_2core_shared.txt",
               "H200 machine": RESULTS / "gpu_speed_h200" / "data_pipeline.log"}
    rows = []
    for machine, path in sources.items():
        for table in parse_markdown_tables(path.read_text()):
            if "images/s/core" in table[0]:
                rows += [{"machine": machine, "pipeline": r["pipeline"], "variant": r["variant"],
                          "images/s/core": f"{float(r['images/s/core']):.1f}", "x reference": r["x reference"]}
                         for r in table]
    return rows


def fidelity_rows() -> list[dict]:
    """The paired fixed-step comparison of the release's arithmetic and the fixes (transcribed table)."""
    table = next(t for t in parse_markdown_tables(TRANSCRIBED.read_text()) if "arithmetic" in t[0])
    return [{"arithmetic": r["arithmetic"].split(" (")[0], "seed": r["seed"],
             "top-1 after 300 steps": r["after 300 steps"], "after 600 steps": r["after 600 steps (end)"]}
            for r in table]


# ----------------------------------------------------------------------------------------------------- main
def write_table(rows: list[dict], name: str) -> str:
    """``report/<name>.csv`` and ``.md``; returns the markdown."""
    write_rows(rows, REPORT / f"{name}.csv")
    text = markdown_table(rows)
    (REPORT / f"{name}.md").write_text(text)
    return text


def headline_tables(index: list[dict]) -> dict[str, list[dict]]:
    """Every headline table of the report, by name."""
    tables = {name: fmnist_headline(index, spec["runs"]) for name, spec in FMNIST_HEADLINES.items()}
    tables.update(gpu_step=gpu_step_rows(), gpu_levers=gpu_lever_rows(), data_pipeline=data_pipeline_rows(),
                  fidelity=fidelity_rows())
    return tables


def fill_readme(text: str, tables: dict[str, list[dict]]) -> str:
    """``text`` with each table block (``<!-- table: NAME -->`` ... ``<!-- end -->``) replaced by that table."""
    def table(match: re.Match) -> str:
        name = match.group(1)
        if name not in tables:
            raise SystemExit(f"{README} names a table {name!r} that report.py does not make ({', '.join(tables)})")
        return f"<!-- table: {name} -->\n{markdown_table(tables[name])}<!-- end -->"
    return re.sub(r"<!-- table: (\w+) -->\n.*?<!-- end -->", table, text, flags=re.S)


def draw_plots(tables: dict[str, list[dict]]) -> list[Path]:
    """One plot per headline: accuracy against training time for the five rows (both seeds), images/s per lever,
    images/s per core per pipeline variant."""
    from fmnist_benchmark import LABELS
    from plot import bar_plot, line_plot
    paths = []
    for name, spec in FMNIST_HEADLINES.items():
        series, styles = {}, {}
        for i, (row, seeds) in enumerate(curves_of(spec["runs"]).items()):
            for seed, points in seeds.items():
                label = f"{LABELS[row]}, seed {seed}"
                series[label] = points
                styles[label] = {"color": f"C{i}", "linestyle": "-" if seed == 31 else "--"}
        path = REPORT / f"{name}.png"
        line_plot(series, str(path), x_label="training time (min, 2 CPU cores)", y_label="test top-1 (%)",
                  title=spec["title"], x_range=(0, 31), styles=styles)
        paths.append(path)
    levers = {}
    for row in tables["gpu_levers"]:
        levers.setdefault(f"{row['method']}, {row['precision']}", {})[row["lever"]] = float(row["images/s"])
    paths.append(REPORT / "gpu_levers.png")
    bar_plot(levers, str(paths[-1]), y_label="images/s (one H200)", title="The GPU step's levers, cumulative")
    pipelines = {}
    for row in tables["data_pipeline"]:
        pipelines.setdefault(f"{row['pipeline']}, {row['machine']}", {})[row["variant"]] = float(row["images/s/core"])
    paths.append(REPORT / "data_pipeline.png")
    bar_plot(pipelines, str(paths[-1]), y_label="images/s per core",
             title="Data pipeline per core, against the release's composition (reference)")
    return paths


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    index = collect_runs()
    write_rows(index, RESULTS / "index.csv", INDEX_COLUMNS)
    print(f"{RESULTS / 'index.csv'}: {len(index)} runs")
    tables = headline_tables(index)
    for name, rows in tables.items():
        write_table(rows, name)
    README.write_text(fill_readme(README.read_text(), tables))
    print(f"wrote the tables of {README} and {REPORT}/*.csv, *.md")
    for path in draw_plots(tables):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
