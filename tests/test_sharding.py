"""Parameters placed on a (data, fsdp, tensor) mesh of 8 fake CPU devices give the same outputs."""
import numpy as np
import pytest

import jax
import jax.numpy as jnp
from flax import nnx

from streamformer_jax import sharding
from streamformer_jax.models import config as configs
from streamformer_jax.models.streamformer import normalize_pixels
from test_model import _randomised


@pytest.mark.parametrize("rules,shape", [("dp", (8, 1, 1)), ("fsdp", (2, 4, 1)), ("fsdp_tp", (2, 2, 2))])
def test_sharded_forward_matches_single_device(rules, shape):
    assert jax.device_count() == 8
    cfg = configs.tiny(num_heads=4, hidden_size=64)
    graphdef, state = nnx.split(_randomised(cfg, seed=7))
    frames = jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 3, 32, 32, 3), dtype=np.uint8))
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(normalize_pixels(x))["pooler_output"])
    ref = forward(state, frames)
    mesh = sharding.make_mesh(*shape)
    sharded = sharding.shard_state(state, mesh, rules)
    kernel = sharded["layers"][0]["attention"]["qkv"]["base"]["kernel"]
    fc1 = sharded["layers"][0]["mlp"]["fc1"]["kernel"]
    expect_embed = None if rules == "dp" else "fsdp"
    assert kernel.sharding.spec[0] == expect_embed
    if rules == "fsdp_tp":
        assert kernel.sharding.spec[2] == "tensor" and fc1.sharding.spec[1] == "tensor"
    got = forward(sharded, jax.device_put(frames, sharding.batch_sharding(mesh, 5)))
    # outputs reach ~10 with these random weights; sharded reductions differ in float32 rounding only
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_mesh_errors_are_clear():
    with pytest.raises(ValueError, match="cannot be split"):
        sharding.make_mesh(-1, 3, 1)
    with pytest.raises(ValueError, match="unknown sharding rules"):
        sharding.get_rules("pipeline")
