"""The report of the benchmarks is made from the committed result files (benchmarks/report.py), and the README's
results section says only what those files hold."""
import csv
import json
import re
import statistics
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
pytest.importorskip("PIL")
import report  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
LINK = re.compile(r"\]\(([^)#\s]+)(?:#([^)\s]*))?\)")


def results_section(readme: str) -> str:
    return readme.split("\n## Results\n", 1)[1].split("\n## ", 1)[0]


def numbers_in_text(text: str) -> list[str]:
    """The numbers a reader sees (``85.2``, ``-2.8``, ``1,217`` -> ``1217``), not digits inside words (``H100``)."""
    return [n.replace(",", "") for n in re.findall(r"(?<![\w.\-+])[-+]?\d[\d,]*(?:\.\d+)?", text)]


def numbers_in_file(path: Path) -> set[str]:
    """Every number a file holds, signed and unsigned, with and without thousands separators (``4,920``)."""
    text = path.read_text()
    grouped = {n.replace(",", "") for n in re.findall(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?", text)}
    return set(re.findall(r"\d+(?:\.\d+)?", text)) | set(re.findall(r"[-+]\d+(?:\.\d+)?", text)) | grouped


def test_every_number_of_the_readme_results_appears_in_the_result_files_it_links_to():
    """Each row's results come from the result files the row links to (under benchmarks/results/); every other
    number of the section (budget, label share, seeds) from some file the section links to."""
    section = results_section((REPO / "README.md").read_text())
    rows = [line for line in section.splitlines() if line.startswith("|") and not line.startswith("|---")][1:]
    assert len(rows) == 3 and all(len(row.strip("|").split("|")) == 3 for row in rows)  # three one-line rows
    everything = set()
    for row in rows:
        what, result, details = (cell.strip() for cell in row.strip("|").split("|"))
        linked = [REPO / target for target, _ in LINK.findall(details)]
        assert all(path.is_file() for path in linked), linked
        data = [path for path in linked if RESULTS in path.parents]
        assert data, f"the row {what!r} links to no result file"
        found = set().union(*(numbers_in_file(path) for path in data))
        assert numbers_in_text(result) and not [n for n in numbers_in_text(result) if n not in found], \
            (what, [n for n in numbers_in_text(result) if n not in found])
        everything |= set().union(*(numbers_in_file(path) for path in linked))
    missing = [n for n in numbers_in_text(section) if n not in everything]
    assert not missing, f"numbers of the README's results that no linked file holds: {missing}"
    assert not re.search(r"20\d\d-\d\d-\d\d", section)  # nothing dated


def test_every_link_of_the_readmes_resolves():
    """Every relative link of README.md and benchmarks/README.md names a file that exists, and an anchor of a
    markdown file names one of its headings (GitHub's anchor rule)."""
    def anchors(path: Path) -> set[str]:
        heads = re.findall(r"^#+ (.+)$", path.read_text(), re.M)
        return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}
    for readme in (REPO / "README.md", REPO / "benchmarks" / "README.md"):
        for target, anchor in LINK.findall(readme.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            path = (readme.parent / target).resolve()
            assert path.exists(), f"{readme.name}: {target}"
            if anchor and path.suffix == ".md":
                assert anchor in anchors(path), f"{readme.name}: {target}#{anchor}"
        for anchor in re.findall(r"\]\(#([^)]+)\)", readme.read_text()):
            assert anchor in anchors(readme), f"{readme.name}: #{anchor}"


def test_the_report_is_what_report_py_makes_from_the_result_files():
    """benchmarks/README.md's tables, results/index.csv and results/report/*.csv are the script's output for the
    committed files: regenerating them changes nothing."""
    index = report.collect_runs()
    tables = report.headline_tables(index)
    readme = (REPO / "benchmarks" / "README.md").read_text()
    assert report.fill_readme(readme, tables) == readme
    assert len(readme.splitlines()) <= 300
    with open(RESULTS / "index.csv", newline="") as handle:
        assert list(csv.DictReader(handle)) == [{c: str(row[c]) for c in report.INDEX_COLUMNS} for row in index]
    for name, rows in tables.items():
        with open(RESULTS / "report" / f"{name}.csv", newline="") as handle:
            assert list(csv.DictReader(handle)) == rows, name


def test_every_kept_run_is_in_the_index():
    """Every run folder (results.json) is a row of its own; every row of a folder's results.csv is either its run
    folder's row or a copy of a row already indexed (same method, seed, steps, end accuracy)."""
    from fmnist_benchmark import read_rows, row_key
    index = {row["run"]: row for row in report.collect_runs()}
    for result in RESULTS.glob("*/*/results.json"):
        assert f"{result.parent.parent.name}/{result.parent.name}" in index, result
    ends = {(row["seed"], str(row["steps"]), row["top1_end"]) for row in index.values()}
    for table in RESULTS.glob("*/results.csv"):
        for row in read_rows(table):
            assert (row["seed"], row["iterations"], row["top1_end"]) in ends, (table, row_key(row))


def test_the_headline_means_and_gains_against_a_hand_computation():
    """Suave's 1% row: the mean of its two runs' results.json, minus the strongest supervised recipe's mean."""
    def end(run: str) -> float:
        return json.loads((RESULTS / run / "results.json").read_text())["val_acc1"]
    runs = report.FMNIST_HEADLINES["fmnist_1perc"]["runs"]
    suave = statistics.mean(end(r) for r in runs["suave"].values())
    strong = statistics.mean(end(r) for r in runs["supervised_strong"].values())
    rows = {row["row"]: row for row in report.fmnist_headline(report.collect_runs(), runs)}
    assert rows["Suave"]["mean"] == f"{suave:.1f}"
    assert rows["Suave"]["gain over strongest supervised"] == f"{round(suave - strong, 1) + 0:+.1f}"
    assert rows["Suave"]["spread"] == f"{abs(end(runs['suave'][31]) - end(runs['suave'][32])):.1f}"
    assert rows["strongest supervised (baseline)"]["gain over strongest supervised"] == "—"


def test_markdown_tables_are_parsed_back_as_written():
    rows = [{"method": "suave", "images/s": 770.25, "note": "x"}, {"method": "daino", "images/s": 380.0, "note": ""}]
    parsed = report.parse_markdown_tables("text\n" + report.markdown_table(rows) + "more text\n")
    assert parsed == [[{"method": "suave", "images/s": "770.2", "note": "x"},
                       {"method": "daino", "images/s": "380.0", "note": ""}]]
