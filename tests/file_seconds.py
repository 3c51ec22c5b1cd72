"""Rewrite tests/file_seconds.json (the order conftest.py starts the test files in) from a full
run's JUnit XML: each file's seconds are its test cases' times (setup, call and teardown) summed.

    python -m pytest -q -n 2 --dist loadfile --junitxml=run.xml
    python tests/file_seconds.py run.xml
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent


def file_seconds(junit_xml: str) -> dict[str, int]:
    """{test file name: whole seconds}, longest first; files under a second are left out."""
    seconds: Counter[str] = Counter()
    for case in ET.parse(junit_xml).iter("testcase"):
        parts = case.get("classname", "").split(".")  # "tests.test_tune" (or "tests.test_x.TestCase")
        name = next((p for p in parts if p.startswith("test_")), parts[-1]) + ".py"
        seconds[name] += float(case.get("time") or 0)
    return {name: round(s) for name, s in seconds.most_common() if s >= 1}


if __name__ == "__main__":
    path = HERE / "file_seconds.json"
    doc = json.loads(path.read_text())
    doc["seconds"] = file_seconds(sys.argv[1])
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{path}: {len(doc['seconds'])} files, {sum(doc['seconds'].values())} s")
