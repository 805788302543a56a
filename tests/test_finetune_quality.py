"""Quality evidence (README "Quality evidence"): the tiny model finetuned with configs/finetune_k400.py:tiny on
the built-in dataset (8 training clips, 4 colour classes) classifies a held-out set of 16 other clips under the
original 4x3 view protocol far above chance (1/4) and above the same model before training. Runs
scripts/finetune_quality.py as the README does (one CPU device)."""
import json
import subprocess
import sys

import pytest

from test_train_support import REPO, subprocess_env


@pytest.mark.slow
@pytest.mark.evidence
def test_finetuned_tiny_model_beats_chance_on_held_out_clips(tmp_path):
    out = subprocess.run([sys.executable, "scripts/finetune_quality.py", "--workdir", str(tmp_path)],
                         env=subprocess_env(1), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    s = json.loads((tmp_path / "summary.json").read_text())
    print(json.dumps(s))
    assert s["steps"] == 40 and s["heldout_videos"] == 16 and s["chance_top1"] == 0.25
    assert s["finetuned_top1"] >= 0.75  # chance + 0.5: at least 12 of the 16 held-out clips
    assert s["finetuned_top1"] >= s["untrained_top1"] + 0.4
