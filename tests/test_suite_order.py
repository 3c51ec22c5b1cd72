"""The order the test files start in (longest first, tests/file_seconds.json) names real files,
and its rewrite from a run's JUnit XML sums each file's test cases."""

from __future__ import annotations

import json
from pathlib import Path

from file_seconds import file_seconds

HERE = Path(__file__).resolve().parent
FILE_SECONDS = json.loads((HERE / "file_seconds.json").read_text())["seconds"]


def test_every_timed_file_exists_and_the_longest_are_timed():
    assert set(FILE_SECONDS) <= {p.name for p in HERE.glob("test_*.py")}
    assert list(FILE_SECONDS.values()) == sorted(FILE_SECONDS.values(), reverse=True)
    assert FILE_SECONDS["test_e2e.py"] > 60  # the smoke study is among the longest


def test_file_seconds_sums_each_files_cases(tmp_path):
    xml = tmp_path / "run.xml"
    xml.write_text('<testsuites><testsuite name="pytest">'
                   '<testcase classname="tests.test_a" name="x" time="1.4"/>'
                   '<testcase classname="tests.test_b" name="y" time="0.5"/>'
                   '<testcase classname="tests.test_a" name="z" time="2.2"/>'
                   '<testcase classname="tests.test_c.TestThing" name="w" time="3.0"/>'
                   '</testsuite></testsuites>')
    assert file_seconds(str(xml)) == {"test_a.py": 4, "test_c.py": 3}
