"""The LSTR online-action-detection head in JAX: sampling and loss as the original, online inference equal to the
offline (whole-sequence, causal) result, exact resume, the CLI, and learning on separable synthetic features."""
import json
import pathlib

import jax
import numpy as np
import pytest

from eval import oad_data as D
from eval import oad_lstr as L
from eval import oad_train as T
from test_train_support import REPO, jax_cache  # noqa: F401


@pytest.fixture(autouse=True, scope="module")
def _compilation_cache(jax_cache):  # noqa: F811 - the runs below compile the same programs again
    from streamformer_jax.train.loop import enable_compilation_cache

    enable_compilation_cache(jax_cache)


def small_config(**over):
    import importlib.util

    spec = importlib.util.spec_from_file_location("_oad_cfg", REPO / "configs" / "oad_lstr.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config("tiny")
    cfg.model.long_memory_seconds, cfg.model.work_memory_seconds = 4, 2  # 16 long frames (4 samples), 8 work
    cfg.model.d_model, cfg.model.dim_feedforward = 32, 64
    cfg.epochs, cfg.batch_size, cfg.progress_bar, cfg.eval_batch = 3, 4, False, 16
    for k, v in over.items():
        cfg[k] = v
    return cfg


def make_dataset(root: pathlib.Path, *, sessions=(6, 3), classes=4, dim=12, seed=0, ambiguous=True):
    """LSTR layout: root/data_info.json + root/SYN/target_perframe/*.npy, features root/features/*.npy.
    Features = noisy class prototypes, so the head can learn the per-frame class."""
    rng = np.random.default_rng(seed)
    names = ["Background"] + [f"c{i}" for i in range(1, classes)] + (["Ambiguous"] if ambiguous else [])
    proto = rng.standard_normal((len(names), dim)) * 2
    (root / "SYN" / "target_perframe").mkdir(parents=True)
    (root / "features").mkdir()
    split = {"train": [], "test": []}
    for k in range(sum(sessions)):
        name = f"s{k:02d}"
        split["train" if k < sessions[0] else "test"].append(name)
        n = int(rng.integers(30, 60))
        labels = np.zeros(n, int)
        t = int(rng.integers(0, 5))
        while t < n:
            length = int(rng.integers(3, 9))
            labels[t:t + length] = rng.integers(1, classes)
            t += length + int(rng.integers(3, 9))
        if ambiguous:
            labels[rng.random(n) < 0.05] = len(names) - 1
        targets = np.eye(len(names), dtype=np.float32)[labels]
        feats = (proto[labels] + rng.standard_normal((n, dim))).astype(np.float32)
        np.save(root / "SYN" / "target_perframe" / f"{name}.npy", targets)
        np.save(root / "features" / f"{name}.npy", feats)
    info = {"SYN": {"class_names": names, "num_classes": len(names), "ignore_index": len(names) - 1 if ambiguous
                    else -100, "metrics": "AP" if ambiguous else "cAP", "fps": 4,
                    "train_session_set": split["train"], "test_session_set": split["test"]}}
    (root / "data_info.json").write_text(json.dumps(info))
    return root / "SYN", root / "features"


# ------------------------------------------------------------------------------------------- unit rules
def test_memory_sampling_as_the_original():
    # training: linspace(max(0, s - 16), s - 1, 4) sorted, int32, clipped
    assert L.train_long_indices(20, 16, 4).tolist() == [4, 9, 14, 19]
    assert L.train_long_indices(0, 16, 4).tolist() == [0, 0, 0, 0]  # linspace(0, -1): -0.33.. -> 0, -1 -> 0
    # test: arange(max(0, s - 16), s)[::4], zeros in front
    assert L.test_long_indices(20, 16, 4, 4).tolist() == [4, 8, 12, 16]
    assert L.test_long_indices(6, 16, 4, 4).tolist() == [0, 0, 0, 4]
    # padding: every leading zero but the last is masked
    assert L.padding_mask(np.array([0, 0, 0, 4])).tolist() == [-np.inf, -np.inf, 0, 0]
    assert L.padding_mask(np.array([0, 1, 2, 3])).tolist() == [0, 0, 0, 0]
    # training windows: offset in [0, Nw), [s, s + Nw) with s + Nw < n
    sessions = [D.Session("a", np.zeros((20, 1)), np.zeros((20, 2)))]
    windows = D.epoch_windows(sessions, 8, np.random.default_rng(0))
    starts = sorted(s for _, s in windows)
    assert all(s + 8 < 20 for s in starts) and starts == list(range(starts[0], 12, 8))


def test_mce_loss_matches_numpy_reference():
    rng = np.random.default_rng(0)
    z, y = rng.standard_normal((10, 5)), np.eye(5)[rng.integers(0, 5, 10)]
    w = np.ones(10)
    w[-2:] = 0  # padding rows

    def ref(ignore):
        keep = [c for c in range(5) if c != ignore]
        rows = [i for i in range(8) if ignore is None or y[i, ignore] != 1]
        zz = z[:, keep] if ignore is not None else z
        logp = zz - np.log(np.exp(zz).sum(1, keepdims=True))
        yy = y[:, keep] if ignore is not None else y
        return np.mean([-(yy[i] * logp[i]).sum() for i in rows])

    for ignore in (None, 4):
        assert float(L.mce_loss(z, y, w, ignore)) == pytest.approx(ref(ignore), rel=1e-5)


def test_online_inference_equals_offline_causal_result():
    cfg = small_config()
    sizes = L.memory_sizes(cfg.model)
    params = L.init_params(cfg.model, 12, 5, seed=3)
    feats = np.random.default_rng(1).standard_normal((41, 12)).astype(np.float32)
    predict = jax.jit(lambda a, b, c: jax.nn.softmax(L.forward(params, a, b, c, num_heads=4), -1))
    offline = L.online_scores(predict, feats, sizes, batch=8)
    online = L.OnlineLSTR(params, sizes, 4)
    streamed = np.stack([online.push(f) for f in feats])
    assert offline.shape == streamed.shape == (41, 5)
    np.testing.assert_allclose(streamed, offline, atol=1e-5)
    # causal: frame t's score does not change when later frames change
    changed = feats.copy()
    changed[30:] += 5
    again = L.online_scores(predict, changed, sizes, batch=8)
    np.testing.assert_allclose(again[:30], offline[:30], atol=1e-6)
    assert np.abs(again[30:] - offline[30:]).max() > 1e-3


# -------------------------------------------------------------------------------------------- training
def test_resume_is_exact_and_head_learns(tmp_path):
    ann, feats = make_dataset(tmp_path)
    cfg = small_config()
    straight = T.train(cfg, feats, ann, tmp_path / "a", log=lambda s: None)
    # the same run stopped after 5 steps (mid-epoch), then resumed
    assert T.train(small_config(), feats, ann, tmp_path / "b", stop_after_steps=5, log=lambda s: None)["step"] == 5
    resumed = T.train(small_config(), feats, ann, tmp_path / "b", log=lambda s: None)
    assert resumed["step"] == straight["step"] > 5
    assert resumed["mean_AP"] == straight["mean_AP"]
    assert resumed["per_class_AP"] == straight["per_class_AP"]
    # learning: separable features -> far above the chance level (random scores)
    assert straight["metric"] == "mAP" and straight["mean_AP"] > straight["chance_mean_AP"] + 0.3
    rows = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/mAP" in r for r in rows) and rows[0]["lr"] == pytest.approx(cfg.optim.lr * 0.3)


def test_calibrated_map_for_tvseries_style_data(tmp_path):
    ann, feats = make_dataset(tmp_path, ambiguous=False, seed=1)
    res = T.train(small_config(epochs=1), feats, ann, tmp_path / "w", eval_only=True, log=lambda s: None)
    assert res["metric"] == "mcAP" and 0 <= res["mean_AP"] <= 1 and res["step"] == 0


def test_cli_end_to_end_and_errors(tmp_path, capsys):
    ann, feats = make_dataset(tmp_path)
    args = ["--features", str(feats), "--annotations", str(ann), "--config",
            str(REPO / "configs" / "oad_lstr.py") + ":tiny", "--workdir", str(tmp_path / "w"),
            "--config.epochs=1", "--config.model.long_memory_seconds=4", "--config.model.work_memory_seconds=2",
            "--config.progress_bar=False", "--config.eval_batch=16"]
    assert T.main(args) == 0
    res = json.loads((tmp_path / "w" / "results.json").read_text())
    assert res["dataset"] == "SYN" and res["test_sessions"] == 3
    capsys.readouterr()
    bad = list(args)
    bad[3] = str(tmp_path / "nowhere")
    assert T.main(bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "nowhere" in err[0]
    (tmp_path / "data_info.json").unlink()
    assert T.main(args) == 2
    assert "data_info.json" in capsys.readouterr().err
