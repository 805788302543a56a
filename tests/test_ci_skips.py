"""STREAMFORMER_REQUIRE (tests/conftest.py): a skip for a missing fixture or optional dependency is a skip in a
plain run and a failure where the run requires everything (CI), so a green CI means every test ran."""
import os
import pathlib
import subprocess
import sys

import pytest

CONFTEST = pathlib.Path(__file__).with_name("conftest.py")
PROBES = """
import pathlib
import pytest
from conftest import require_shared


def test_optional_module():
    pytest.importorskip("no_such_module_streamformer")


def test_shared_fixture():
    require_shared(pathlib.Path("/nonexistent/shared/fixture"))


def test_runs():
    assert True
"""


def _pytest(tmp_path, require: str) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text(CONFTEST.read_text())
    (tmp_path / "test_probes.py").write_text(PROBES)
    env = {k: v for k, v in os.environ.items() if k != "STREAMFORMER_REQUIRE"}
    if require:
        env["STREAMFORMER_REQUIRE"] = require
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_probes.py"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("require, summary", [
    ("", "1 passed, 2 skipped"),
    ("shared", "1 failed, 1 passed, 1 skipped"),  # the missing shared fixture fails; the module still skips
    ("all", "2 failed, 1 passed"),  # every skip fails
])
def test_skips_become_failures_where_required(tmp_path, require, summary):
    proc = _pytest(tmp_path, require)
    assert summary in proc.stdout, proc.stdout[-2000:]
    assert (proc.returncode == 0) == (not require), proc.stdout[-2000:]
    if require == "all":
        assert "STREAMFORMER_REQUIRE=all" in proc.stdout and "no_such_module_streamformer" in proc.stdout
