"""`kdiag graphs validate` on files: every problem, with file, graph and path. No broker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def validate(*paths: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kdiag.cli", "--log-level", "WARNING", "graphs", "validate", *paths],
        capture_output=True, text=True, timeout=120, check=False, cwd=REPO_ROOT,
    )


def test_shipped_graphs_are_valid() -> None:
    result = validate("rootcause/")
    assert result.returncode == 0, result.stdout
    assert result.stderr.strip().endswith("graphs valid")


def test_every_problem_is_listed(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "MyGraph:\n  diagnoses: [PVCPending]\n  nodes:\n  - {name: a, plugin: image-pull-clasifier}\n"
        "  - {name: b, plugin: termination-history, timeout: 100}\n"
        "  verdicts:\n  - {cause: Bad_Cause, responsibility: NOBODY, summary: x}\n"
    )
    result = validate(str(bad))
    lines = result.stdout.splitlines()
    assert result.returncode == 1
    assert len(lines) == 4
    assert lines[0].startswith(f"{bad}: graph 'MyGraph' at nodes[0].plugin: unknown plugin 'image-pull-clasifier'. Did you mean image-pull-classifier?")
    assert [line.split(": ")[1] for line in lines[1:]] == [
        "graph 'MyGraph' at nodes[1].timeout",
        "graph 'MyGraph' at verdicts[0].cause",
        "graph 'MyGraph' at verdicts[0].responsibility",
    ]
    assert "4 problems found in 1 graph" in result.stderr


def test_clash_names_the_graph_in_force(tmp_path: Path) -> None:
    clash = tmp_path / "clash.yaml"
    clash.write_text(
        "AnotherNodeGraph:\n  diagnoses: [NodeNotReady]\n  nodes: [{name: n, plugin: node-condition-check}]\n"
        "  verdicts: [{cause: x, responsibility: PLATFORM, summary: x}]\n"
    )
    result = validate("rootcause/", str(clash))
    assert result.returncode == 1
    assert result.stdout.strip() == (
        f"{clash}: graph 'AnotherNodeGraph' at diagnoses[0]: rule 'NodeNotReady' is already analysed by graph "
        "'NodeProblem'. A rule can have only one graph"
    )


def test_yaml_error_names_the_file_and_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("A:\n  diagnoses: [x\n")
    result = validate(str(broken))
    assert result.returncode == 1
    assert result.stdout.startswith(f"{broken}: invalid YAML: while parsing a flow sequence\n  in \"{broken}\", line 2")
