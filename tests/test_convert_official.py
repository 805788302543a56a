"""Converters against the official-reference fixtures: import-pytorch / export-pytorch via the CLI."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from streamformer_jax import FeatureExtractor
from streamformer_jax.checkpoint import is_checkpoint, load_checkpoint
from streamformer_jax.convert.__main__ import main
from streamformer_jax.convert.keymap import official_to_ours
from streamformer_jax.convert.pretrain import read_extras
from streamformer_jax.models.config import StreamFormerConfig
from streamformer_jax.param_tree import ParameterMismatchError

REPO = pathlib.Path(__file__).resolve().parents[1]
TOL = 1e-5
PRESETS = ["tiny", "small"]


def run_cli(*args):
    """The real entry point, in a fresh interpreter."""
    return subprocess.run([sys.executable, "-m", "streamformer_jax.convert", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def import_fixture(fixtures_dir, name, dst):
    assert main(["import-pytorch", "--src", str(fixtures_dir / name), "--dst", str(dst)]) == 0
    return dst


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """name -> (our checkpoint, its export), converted once per module with the in-process CLI."""
    cache = {}

    def get(fixtures_dir, name):
        if name not in cache:
            root = tmp_path_factory.mktemp(name)
            ckpt = import_fixture(fixtures_dir, name, root / "ckpt")
            assert main(["export-pytorch", "--src", str(ckpt), "--dst", str(root / "hf")]) == 0
            cache[name] = ckpt, root / "hf"
        return cache[name]

    return get


def test_import_cli_subprocess(fixtures_dir, tmp_path, converted):
    ckpt = tmp_path / "ckpt"
    r = run_cli("import-pytorch", "--src", fixtures_dir / "tiny", "--dst", ckpt)
    assert r.returncode == 0, r.stderr
    assert "wrote our checkpoint" in r.stdout and "lora_rank=32" in r.stdout
    assert is_checkpoint(ckpt) and not (ckpt / "model.safetensors").exists()  # ours, not a copy of the source
    config, params = load_checkpoint(ckpt)
    ref_config, ref_params = load_checkpoint(converted(fixtures_dir, "tiny")[0])  # forward-checked below
    assert config == ref_config and sorted(params) == sorted(ref_params)
    for k in params:
        assert params[k].tobytes() == ref_params[k].tobytes(), k


@pytest.mark.parametrize("name", PRESETS)
def test_imported_checkpoint_forward_matches_official(fixtures_dir, converted, name):
    ckpt, _ = converted(fixtures_dir, name)
    config, _ = load_checkpoint(ckpt)
    assert config == StreamFormerConfig.from_hf_json(fixtures_dir / name / "config.json")
    fx = FeatureExtractor.from_checkpoint(ckpt)
    video = np.load(fixtures_dir / name / "video.npy")
    ref = np.load(fixtures_dir / name / "outputs_clip.npz")
    out = fx(video)
    for key in ("pooler_output", "last_hidden_state"):
        assert out[key].shape == ref[key].shape, key
        np.testing.assert_allclose(out[key], ref[key], rtol=0, atol=TOL, err_msg=key)


@pytest.mark.parametrize("name", PRESETS)
def test_import_then_export_is_bit_exact(fixtures_dir, converted, name):
    _, out = converted(fixtures_dir, name)
    ours, theirs = load_file(str(out / "model.safetensors")), load_file(str(fixtures_dir / name / "model.safetensors"))
    assert sorted(ours) == sorted(theirs)  # every key, the mask buffers included
    assert sum(k.endswith("temporal_attention.attention.mask") for k in ours) == len(
        [k for k in theirs if k.endswith(".mask")]) > 0
    for k in theirs:
        assert ours[k].dtype == theirs[k].dtype == np.float32, k
        assert ours[k].shape == theirs[k].shape, k
        assert ours[k].tobytes() == theirs[k].tobytes(), f"{k} differs"
    with safe_open(str(out / "model.safetensors"), "np") as f:
        assert f.metadata() == {"format": "pt"}
    exported = json.loads((out / "config.json").read_text())
    official = json.loads((fixtures_dir / name / "config.json").read_text())
    official.pop("transformers_version")
    assert exported == official


def test_export_accepts_an_official_directory_as_source(fixtures_dir, tmp_path):
    assert main(["export-pytorch", "--src", str(fixtures_dir / "tiny"), "--dst", str(tmp_path / "hf")]) == 0
    ours, theirs = load_file(str(tmp_path / "hf" / "model.safetensors")), load_file(
        str(fixtures_dir / "tiny" / "model.safetensors"))
    assert sorted(ours) == sorted(theirs)
    assert all(ours[k].tobytes() == theirs[k].tobytes() for k in theirs)


def test_timesformer_prefixed_keys_and_wrapper_extras(fixtures_dir, tmp_path, converted):
    state = load_file(str(fixtures_dir / "tiny" / "model.safetensors"))
    src = tmp_path / "wrapper"
    src.mkdir()
    extras = {"logit_scale": np.array(2.3, np.float32),
              "text_encoder.text_model.head.bias": np.arange(4, dtype=np.float32)}
    save_file({**{"timesformer." + k: v for k, v in state.items()}, **extras}, str(src / "model.safetensors"),
              metadata={"format": "pt"})
    (src / "config.json").write_text((fixtures_dir / "tiny" / "config.json").read_text())
    ckpt = tmp_path / "ckpt"
    assert main(["import-pytorch", "--src", str(src), "--dst", str(ckpt)]) == 0
    _, params = load_checkpoint(ckpt)
    _, plain = load_checkpoint(converted(fixtures_dir, "tiny")[0])
    assert sorted(params) == sorted(plain)
    for k in plain:
        np.testing.assert_array_equal(params[k], plain[k], err_msg=k)
    tensors, aliases, _ = read_extras(ckpt)
    assert sorted(tensors) == sorted(extras) and aliases == {}
    for k, v in extras.items():
        np.testing.assert_array_equal(tensors[k], v)


def test_export_loads_strictly_into_independent_torch_reference(fixtures_dir, converted):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file as load_pt
    from torch_reference import ReferenceBackbone, to_pixels

    _, out = converted(fixtures_dir, "small")
    state = load_pt(str(out / "model.safetensors"))
    model = ReferenceBackbone(json.loads((out / "config.json").read_text()))
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        got = model(to_pixels(np.load(fixtures_dir / "small" / "video.npy")))
    ref = np.load(fixtures_dir / "small" / "outputs_clip.npz")
    for key in ref:
        np.testing.assert_allclose(got[key][0].numpy(), ref[key], rtol=0, atol=TOL, err_msg=key)
    # the strict check is real: a missing buffer or a stray key is refused
    first_mask = next(k for k in state if k.endswith(".mask"))
    with pytest.raises(RuntimeError, match="Missing key"):
        model.load_state_dict({k: v for k, v in state.items() if k != first_mask}, strict=True)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        model.load_state_dict({**state, "head.extra": torch.zeros(1)}, strict=True)


@pytest.mark.parametrize("name", PRESETS)
def test_torch_reference_matches_official_outputs(fixtures_dir, name):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file as load_pt
    from torch_reference import ReferenceBackbone, to_pixels

    fixture = fixtures_dir / name
    model = ReferenceBackbone(json.loads((fixture / "config.json").read_text()))
    model.load_state_dict(load_pt(str(fixture / "model.safetensors")), strict=True)
    with torch.no_grad():
        got = model(to_pixels(np.load(fixture / "video.npy")))
    ref = np.load(fixture / "outputs_clip.npz")
    for key in ("pooler_output", "last_hidden_state"):
        assert got[key].shape[1:] == ref[key].shape
        np.testing.assert_allclose(got[key][0].numpy(), ref[key], rtol=0, atol=TOL, err_msg=key)


# ---- bad inputs ----
def _broken_state(fixtures_dir):
    state = load_file(str(fixtures_dir / "tiny" / "model.safetensors"))
    del state["encoder.layer.1.temporal_dense.bias"]
    state["encoder.layer.0.unknown.weight"] = np.zeros(3, np.float32)
    state["head.mlp.fc1.weight"] = np.zeros((7, 64), np.float32)
    return state


def test_mismatch_lists_every_problem_in_one_error(fixtures_dir):
    config = StreamFormerConfig.from_hf_json(fixtures_dir / "tiny" / "config.json")
    with pytest.raises(ParameterMismatchError) as err:
        official_to_ours(_broken_state(fixtures_dir), config)
    msg = str(err.value)
    for part in ("missing (1): encoder.layer.1.temporal_dense.bias", "unexpected (1): encoder.layer.0.unknown.weight",
                 "head.mlp.fc1.weight: shape (7, 64)"):
        assert part in msg


def test_cli_reports_mismatch_cleanly(fixtures_dir, tmp_path):
    src = tmp_path / "broken"
    src.mkdir()
    save_file(_broken_state(fixtures_dir), str(src / "model.safetensors"), metadata={"format": "pt"})
    (src / "config.json").write_text((fixtures_dir / "tiny" / "config.json").read_text())
    r = run_cli("import-pytorch", "--src", src, "--dst", tmp_path / "ckpt")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ")
    for key in ("encoder.layer.1.temporal_dense.bias", "encoder.layer.0.unknown.weight", "head.mlp.fc1.weight"):
        assert key in r.stderr
    assert not (tmp_path / "ckpt").exists()  # nothing written on failure


@pytest.mark.parametrize("case", ["missing_src", "not_a_dir", "bad_json", "dst_exists", "lora_rank_not_exportable"])
def test_cli_user_errors_are_one_line(fixtures_dir, tmp_path, capsys, case):
    ckpt = tmp_path / "ckpt"
    if case == "missing_src":
        argv = ["import-pytorch", "--src", str(tmp_path / "nope"), "--dst", str(ckpt)]
        expect = "no such file or directory"
    elif case == "not_a_dir":
        (tmp_path / "empty").mkdir()
        argv = ["export-pytorch", "--src", str(tmp_path / "empty"), "--dst", str(tmp_path / "out")]
        expect = "neither a streamformer_jax checkpoint"
    elif case == "bad_json":
        (tmp_path / "bad.json").write_text("{not json")
        argv = ["import-pytorch", "--src", str(fixtures_dir / "tiny"), "--dst", str(ckpt),
                "--config", str(tmp_path / "bad.json")]
        expect = "not valid JSON"
    elif case == "dst_exists":
        ckpt.mkdir()
        (ckpt / "something").write_text("x")
        argv = ["import-pytorch", "--src", str(fixtures_dir / "tiny"), "--dst", str(ckpt)]
        expect = "--overwrite"
    else:
        from streamformer_jax.checkpoint import save_checkpoint
        from streamformer_jax.convert.official import read_official_dir
        from streamformer_jax.models.params import param_shapes

        config, _ = read_official_dir(fixtures_dir / "tiny")
        config = config.replace(lora_rank=8)
        save_checkpoint(ckpt, config, {k: np.zeros(s, np.float32) for k, s in param_shapes(config).items()})
        argv = ["export-pytorch", "--src", str(ckpt), "--dst", str(tmp_path / "out")]
        expect = "LoRA rank 32"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expect in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for sub in ("import-pytorch", "export-pytorch", "import-siglip", "examples:", "--src checkpoint-epoch.pth"):
        assert sub in out
