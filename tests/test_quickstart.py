"""The README quickstart, run as a user would: demo video -> random tiny checkpoint -> features."""
import subprocess
import sys

import numpy as np

from conftest import REPO_ROOT


def _run(*args, cwd):
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_readme_quickstart(tmp_path):
    _run(str(REPO_ROOT / "scripts" / "make_demo_video.py"), "demo.mp4", "--frames", "20", cwd=tmp_path)
    _run("-m", "streamformer_jax.convert", "init-random", "--preset", "tiny", "--dst", "ckpt/tiny", cwd=tmp_path)
    _run("-m", "streamformer_jax.extract", "--checkpoint", "ckpt/tiny", "--video", "demo.mp4", "--out",
         "feats.npz", "--no-progress", cwd=tmp_path)
    feats = np.load(tmp_path / "feats.npz")
    assert feats["pooler_output"].shape == (20, 64)
    assert feats["last_hidden_state"].shape == (20, 4, 64)
    np.testing.assert_allclose(np.diff(feats["timestamps"]), 1 / 12, atol=1e-3)  # 12 fps demo video
    assert np.isfinite(feats["pooler_output"]).all()


def test_init_random_refuses_to_overwrite(tmp_path):
    _run("-m", "streamformer_jax.convert", "init-random", "--dst", "ck", cwd=tmp_path)
    proc = subprocess.run([sys.executable, "-m", "streamformer_jax.convert", "init-random", "--dst", "ck"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and "error:" in proc.stderr
