"""Test-wide setup: 8 fake CPU devices (set before jax is imported) and shared fixture paths."""
import os
import pathlib

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
FIXTURES = SHARED / "fixtures" / "official_reference"
VIDEOS = SHARED / "data" / "videos"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: slow test, excluded from the default run (-m 'not slow')")
    try:  # grain's multiprocessing workers read absl flags; under pytest nobody parses them.
        from absl import flags

        flags.FLAGS.mark_as_parsed()
    except Exception:  # pragma: no cover - absl missing
        pass


def require_shared(path: pathlib.Path) -> pathlib.Path:
    """Skip (with the path as the reason) where ../shared is not laid beside the checkout."""
    if not path.exists():
        pytest.skip(f"shared data not present: {path}")
    return path


@pytest.fixture
def fixtures_dir():
    return require_shared(FIXTURES)


@pytest.fixture
def videos_dir():
    return require_shared(VIDEOS)


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
