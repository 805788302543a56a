"""Test-wide setup: 8 fake CPU devices (set before jax is imported), the fixture locations, and the rule that turns
skips into failures where every fixture and optional dependency must be present (CI).

Fixtures: the tiny official-reference fixture and one short real clip ship with the repository
(`tests/fixtures/`), so the parity, streaming, converter and extraction tests run on any clone. The larger ones
(the `small` official reference, the other real clips) are read from `../shared` beside the checkout; tests that
need them skip with the missing path as the reason.

`STREAMFORMER_REQUIRE`: a comma-separated list of what must be present, "shared" for `../shared`, module names
for optional dependencies, or "all". A required but missing fixture or module fails its test instead of
skipping it; with "all", every skip of any kind fails (CI sets it, so a green CI means every test ran).
"""
import importlib.util
import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
IN_REPO = REPO_ROOT / "tests" / "fixtures"
SHARED = REPO_ROOT.parent / "shared"
REQUIRED = {m.strip() for m in os.environ.get("STREAMFORMER_REQUIRE", "").split(",") if m.strip()}


def required(name: str) -> bool:
    """Whether `name` (a module, or "shared") must be present in this run (`STREAMFORMER_REQUIRE`)."""
    return name in REQUIRED or "all" in REQUIRED


# Test files whose dependency cannot share the [test] environment (apache-beam pins protobuf apart from
# tensorflow-datasets; libtpu probes for a TPU whenever JAX starts): CI runs each in its own environment with that
# module named in STREAMFORMER_REQUIRE. In any other run without the module they are left out of collection, so
# "all" (every skip fails) still means every test of this environment ran.
OWN_ENVIRONMENT = {"test_data_convert_beam.py": "apache_beam", "test_aot_tpu.py": "libtpu"}
collect_ignore = [file for file, module in OWN_ENVIRONMENT.items()
                  if module not in REQUIRED and importlib.util.find_spec(module) is None]


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: slow test, excluded from the default run (-m 'not slow')")
    config.addinivalue_line("markers", "evidence: runs a README quality-evidence script (also slow); CI leaves these "
                                       "out to stay in its time budget: run them with -m evidence")
    try:  # grain's multiprocessing workers read absl flags; under pytest nobody parses them.
        from absl import flags

        flags.FLAGS.mark_as_parsed()
    except Exception:  # pragma: no cover - absl missing
        pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With STREAMFORMER_REQUIRE=all a skipped test is a failed one (its skip reason says what was missing)."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and "all" in REQUIRED:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped, but STREAMFORMER_REQUIRE=all: {reason}"


def require_shared(path: pathlib.Path) -> pathlib.Path:
    """`path` in ../shared; a skip (with the path as the reason) where it is not laid beside the checkout."""
    if not path.exists():
        message = f"shared data not present: {path}"
        if required("shared"):
            pytest.fail(f"{message} (STREAMFORMER_REQUIRE)")
        pytest.skip(message)
    return path


class _FixtureDir:
    """`FIXTURES / name`: the repository's copy of a fixture when it has one, else ../shared's (or a skip)."""

    def __init__(self, in_repo: pathlib.Path, shared: pathlib.Path):
        self.in_repo, self.shared = in_repo, shared

    def __truediv__(self, name: str) -> pathlib.Path:
        local = self.in_repo / name
        return local if local.exists() else require_shared(self.shared / name)

    def __repr__(self) -> str:
        return f"_FixtureDir({self.in_repo} | {self.shared})"


FIXTURES = _FixtureDir(IN_REPO / "official_reference", SHARED / "fixtures" / "official_reference")
VIDEOS = _FixtureDir(IN_REPO / "videos", SHARED / "data" / "videos")


@pytest.fixture
def fixtures_dir():
    return FIXTURES


@pytest.fixture
def videos_dir():
    return VIDEOS


@pytest.fixture(scope="session")
def original_world(tmp_path_factory):
    """The original pretraining data layout (`original_formats`: all.yaml + the annotation files of its 18
    datasets, tiny real videos and images) converted once per session with `convert from-metadata`."""
    import original_formats

    from data_pipelines.convert import convert_metadata

    root = tmp_path_factory.mktemp("original")
    metadata = original_formats.write_original_datasets(root / "src")
    notes = []
    summaries = convert_metadata(str(metadata), str(root / "records"), progress=False, log=notes.append)
    return dict(root=root, metadata=metadata, out=root / "records", summaries=summaries, notes=notes)
