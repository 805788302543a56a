"""Two real JAX processes (CPU, jax.distributed): zero-shot retrieval and grounding split over hosts (items h, h+2,
..., features gathered before the metrics) give the single-process results on every host. Marked slow."""
import json
import textwrap

import pytest

from multihost import run_two_hosts

SETUP = textwrap.dedent(
    """
    import numpy as np
    from streamformer_jax.models.config import get_preset
    from streamformer_jax.tasks.model import MultiTaskModel
    from streamformer_jax.text.model import SiglipTextConfig, init_text_model
    from streamformer_jax.train.multitask_kind import HashTokenizer
    from streamformer_jax.zero_shot import evaluate as E, items as I

    def build():
        cfg = get_preset("tiny", num_frames=4, image_size=32, patch_size=16, lora_rank=4, dtype="float32")
        text = init_text_model(SiglipTextConfig(vocab_size=512, hidden_size=64, intermediate_size=128,
                                                num_hidden_layers=1, num_attention_heads=4,
                                                max_position_embeddings=16, projection_size=64), seed=1)
        model = MultiTaskModel(cfg, ["retrieval", "grounding"], rngs=3, text_encoder=text)
        pm = E.ZeroShotModel(model=model, tokenizer=HashTokenizer(512, 16), label_sets={}, source="random")
        from PIL import Image
        items = []
        for i in range(9):  # hosts get 5 and 4 items: 3 and 2 batches of 2, the second host pads one
            rng = np.random.default_rng(i)
            pixels = rng.integers(0, 256, (12, 40, 48, 3), dtype=np.uint8)
            frames = I.Frames(np.arange(12) / 4.0, 4.0, 3.0, lambda idx, p=pixels: [Image.fromarray(p[j]) for j in idx])
            fields = {"captions": [f"clip {i} word{i % 3}", f"another {i}"],
                      "windows": np.array([[0.5, 1.5], [1.0, 2.5]], np.float32)}
            items.append(I.EvalItem(i, f"v{i}", "D" if i < 5 else "E", f"v{i}", fields, lambda f=frames: f))
        return pm, items
    """
)

HOST_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax
    port, pid = sys.argv[1], int(sys.argv[2])
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    """
) + SETUP + textwrap.dedent(
    """
    pm, items = build()
    out = {t: E.evaluate(t, pm, items, progress=False, batch_size=2)["datasets"] for t in ("retrieval", "grounding")}
    print("RESULT", json.dumps(out))
    print("HOST_OK", pid)
    """
)


@pytest.mark.slow
def test_two_hosts_give_the_single_host_results(tmp_path):
    script = tmp_path / "host.py"
    script.write_text(HOST_SCRIPT)
    outs = run_two_hosts(script, [], timeout=400)
    results = [json.loads(out.split("RESULT ", 1)[1].splitlines()[0]) for out in outs]
    assert results[0] == results[1]
    namespace: dict = {}
    exec(SETUP, namespace)  # the same model and items in this (single) process
    pm, items = namespace["build"]()
    from streamformer_jax.zero_shot.evaluate import evaluate

    single = {t: evaluate(t, pm, items, progress=False) for t in ("retrieval", "grounding")}
    single = json.loads(json.dumps({t: r["datasets"] for t, r in single.items()}))
    assert set(single["retrieval"]) == {"D", "E"}
    for task in single:
        for ds, res in single[task].items():
            got = results[0][task][ds]
            if task == "retrieval":
                for side in ("t2v", "v2t"):
                    for k, v in res[side].items():
                        assert got[side][k] == pytest.approx(v, abs=1e-9), (task, ds, side, k)
            else:
                for key, v in res.items():
                    assert got[key] == pytest.approx(v, abs=1e-9) if not isinstance(v, dict) else \
                        all(got[key][m] == pytest.approx(x, abs=1e-9) for m, x in v.items())
