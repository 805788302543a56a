r"""Online action detection head (LSTR) on frozen StreamFormer features: the MAT/LSTR configuration of spec §7.2.

    python -m eval.oad_train --features FEATURES --annotations data/THUMOS --config configs/oad_lstr.py \
        --workdir /ckpt/oad_thumos
    python -m eval.oad_train --features FEATURES --annotations data/TVSeries --config configs/oad_lstr.py:tvseries \
        --workdir /ckpt/oad_tvseries

Variants: "" (THUMOS'14: 25 epochs, 10 warm-up), "tvseries" (20 epochs, 8 warm-up), "tiny" (a small head for
CPU tests and the built-in streams). Any field can be overridden with `--config.key=value`.

The original (configs/{THUMOS,TVSeries}/MAT/streamformer_multitask_without_flow.yaml): visual features only,
feature head Linear(768 -> 1024) + LayerNorm + ReLU, LSTR with 4 heads, feed-forward 1024, dropout 0, GELU,
long memory 256 s sampled every 4th frame (256 tokens at 4 fps), work memory 8 s (32 frames), encoder
[[16, 1, True], [-1, 2, True]], decoder [-1, 2, True]; MCE loss ignoring the ambiguous class; batch 16;
Adam lr 7e-5, weight decay 5e-5 (L2, as torch.optim.Adam), warm-up cosine per iteration (warm-up factor 0.3,
linear). The MAT-specific future/anticipation branch of that config (FUTURE_SECONDS, GEN_MODULE, FUT_MODULE,
CCI_TIMES) is not part of this head.
"""
import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = (arg or "").strip()
    if variant not in ("", "thumos", "tvseries", "tiny"):
        raise ValueError(f"unknown variant {variant!r}; choose '', 'thumos', 'tvseries' or 'tiny'")
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.dataset = ""  # the data_info.json entry ("THUMOS" / "TVSeries"); "" = the annotation folder's name

    m = c.model = ml_collections.ConfigDict()
    m.d_model = 1024  # FEATURE_HEAD.LINEAR_OUT_FEATURES
    m.num_heads = 4
    m.dim_feedforward = 1024
    m.fps = 4  # annotation / feature rate (data_info.json's fps overrides it)
    m.long_memory_seconds = 256
    m.long_memory_sample_rate = 4
    m.work_memory_seconds = 8
    m.enc_module = ((16, 1, True), (-1, 2, True))  # (queries or -1 for a plain encoder, layers, final LayerNorm)
    m.dec_module = (-1, 2, True)

    o = c.optim = ml_collections.ConfigDict()
    o.lr = 7e-5
    o.weight_decay = 5e-5  # L2 added to the gradient (torch.optim.Adam), every parameter
    o.b1, o.b2, o.eps = 0.9, 0.999, 1e-8
    o.warmup_factor = 0.3
    o.warmup_epochs = 10.0

    c.epochs = 25
    c.batch_size = 16
    c.eval_batch = 128  # windows per inference batch
    c.eval_every_epochs = 0  # also evaluate (online mAP) every N epochs; 0 = only at the end
    c.checkpoint_every_steps = 0  # 0 = at the end of every epoch only
    c.keep_checkpoints = 3
    c.progress_bar = True

    if variant == "tvseries":
        c.epochs = 20
        o.warmup_epochs = 8.0
    if variant == "tiny":
        m.d_model = 64
        m.dim_feedforward = 128
        m.long_memory_seconds = 16
        m.work_memory_seconds = 4
        m.enc_module = ((8, 1, True), (-1, 1, True))
        m.dec_module = (-1, 1, True)
        o.lr = 1e-3
        o.warmup_epochs = 1.0
        c.epochs = 8
        c.batch_size = 8
    return c
