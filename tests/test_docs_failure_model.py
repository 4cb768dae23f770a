"""docs/failure-model.md: every row cites tests, and every cited test exists."""
import ast
import os
import re

import pytest

pytestmark = pytest.mark.simd_independent
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "failure-model.md")


def defined_tests(path):
    """{'test_x', 'TestY::test_z', ...} defined in a test file."""
    tree = ast.parse(open(path).read())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            for sub in node.body:
                if isinstance(sub, ast.FunctionDef):
                    names.add(f"{node.name}::{sub.name}")
    return names


def test_every_row_cites_an_existing_test():
    if not os.path.exists(DOC):
        pytest.skip("docs/ not present")
    rows = [line for line in open(DOC) if line.startswith("|") and not line.startswith("|---")]
    rows = [r for r in rows if not r.startswith("| input") and not r.startswith("| situation")]
    assert len(rows) > 30
    for row in rows:
        cites = re.findall(r"`(tests/[\w/]+\.py)::([\w:]+)`", row)
        assert cites, f"row cites no test: {row.strip()}"
        for path, name in cites:
            full = os.path.join(ROOT, path)
            assert os.path.exists(full), path
            assert name in defined_tests(full), f"{path}::{name} does not exist"
