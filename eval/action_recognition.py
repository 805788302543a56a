"""Action recognition (Kinetics-400, Something-Something v2): test views, pooling, linear probe, evaluation.

    python -m eval.action_recognition probe --checkpoint CKPT --dataset k400 \\
        --train-list train.csv --val-list val.csv --root VIDEOS --out results.json

Test protocol (spec §7.1, the original UMT/VideoMAE-style code):
  * K400: 4 temporal x 3 spatial views. Clip k of K: seg = max(0, (n-1)/T), frame_i = min(round(seg*i) +
    int(seg/(K+1)*(k+1)), n-1) (round = NumPy's half-to-even, as `np.round`).
  * SSv2: 2 x 3 views. tick = n/T; the 2T indices {int(tick/2 + tick*x)} + {int(tick*x)}, x < T, sorted;
    view k takes every second one from k (`[k::2]`).
  * Frames are resized so the short side equals the crop size (bilinear), then 3 crops of crop x crop are
    taken along the long side at int(j * (L - crop) / 2), j = 0, 1, 2.
  * The softmax of every view is averaged per video; top-1 / top-5 on the averaged scores.

Pooling of one clip into a vector ("mean", "last", "official_bug") and the original's classifier head
(`fc_norm` then `classifier`) are `streamformer_jax.models.classifier`; the head and the original AR checkpoints
are read and written by `streamformer_jax.convert.classifier_io`.

Evaluation runs data-parallel over a device mesh (the batch axis split over every device) and over hosts
(host h takes videos h, h + H, ...); the last batch is padded with blank views that are masked out of the
scores; per-host counts are summed across hosts; a tqdm bar shows progress; results go to JSON.

Full finetuning (LoRA on the spatial attention, as the original) is the trainer's "classifier" model kind
(`configs/finetune_k400.py`, `configs/finetune_ssv2.py`); its run exports the backbone and this head
(`WORKDIR/export/classifier_head.npz`) for `evaluate --checkpoint WORKDIR/export --head ...`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
from typing import Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from streamformer_jax import cli, sharding
from streamformer_jax.checkpoint import load_any
from streamformer_jax.convert.classifier_io import load_ar_checkpoint, load_head, save_head
from streamformer_jax.models.classifier import POOLINGS, head_logits, init_head, pool_clip
from streamformer_jax.models.params import model_from_flat_params
from streamformer_jax.models.streamformer import normalize_pixels
from streamformer_jax.video import VideoReader, VideoReadError, resize_short_side

# ------------------------------------------------------------------------------------------ annotation lists


def read_annotation_list(path, root: str | os.PathLike = "", fmt: str = "auto") -> list[tuple[str, int]]:
    """(video path, label) pairs from an annotation list (spec §7.1).

    fmt "csv": `file.mp4,label` (Kinetics, `data_list/k400/*.csv`); "space": `id.webm label` (SSv2);
    "auto": per line, the label is the text after the last comma, else after the last whitespace (file
    names may contain spaces or commas; the label never does). Blank lines are skipped. Relative paths are
    joined to `root`.
    """
    if fmt not in ("auto", "csv", "space"):
        raise ValueError(f"fmt must be auto, csv or space, got {fmt!r}")
    out = []
    for lineno, raw in enumerate(pathlib.Path(path).read_text().splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if fmt == "csv" or (fmt == "auto" and "," in line):
            name, _, label = line.rpartition(",")
        else:
            parts = line.rsplit(None, 1)
            name, label = (parts[0], parts[1]) if len(parts) == 2 else ("", parts[0])
        name = name.strip().strip('"')
        try:
            value = int(label.strip())
        except ValueError:
            raise ValueError(f"{path}:{lineno}: expected '<file>,<int label>' or '<file> <int label>', "
                             f"got {raw!r}") from None
        if not name:
            raise ValueError(f"{path}:{lineno}: no file name in {raw!r}")
        out.append((str(pathlib.Path(root) / name) if root else name, value))
    return out


# ---------------------------------------------------------------------------------------------- view sampling


@dataclasses.dataclass(frozen=True)
class Protocol:
    name: str
    num_frames: int = 16
    temporal_views: int = 4
    spatial_views: int = 3

    @property
    def num_views(self) -> int:
        return self.temporal_views * self.spatial_views


def get_protocol(name: str, num_frames: int = 16, temporal_views: int | None = None,
                 spatial_views: int = 3) -> Protocol:
    if name not in ("k400", "ssv2"):
        raise ValueError(f"unknown protocol {name!r}; choose k400 or ssv2")
    default_t = 4 if name == "k400" else 2
    return Protocol(name, num_frames, temporal_views or default_t, spatial_views)


def kinetics_test_indices(n: int, num_frames: int, clip: int, num_clips: int) -> np.ndarray:
    """The original `_get_seq_frames(clip_idx=clip)` in test mode (test_num_segment = num_clips)."""
    seg = max(0.0, float(n - 1) / num_frames)
    duration = seg / (num_clips + 1)
    return np.array([min(int(np.round(seg * i)) + int(duration * (clip + 1)), n - 1)
                     for i in range(num_frames)], np.int64)


def ssv2_test_indices(n: int, num_frames: int, clip: int, num_clips: int = 2) -> np.ndarray:
    """The original SSv2 test sampling: 2T sorted indices, view `clip` = every second one from `clip`."""
    tick = n / float(num_frames)
    idx = [int(tick / 2.0 + tick * x) for x in range(num_frames)] + [int(tick * x) for x in range(num_frames)]
    while len(idx) < num_frames * num_clips:
        idx.append(idx[-1])
    idx = np.sort(np.array(idx, np.int64))
    return idx[clip::num_clips][:num_frames]


def temporal_indices(protocol: Protocol, n: int, clip: int) -> np.ndarray:
    if protocol.name == "k400":
        return kinetics_test_indices(n, protocol.num_frames, clip, protocol.temporal_views)
    return ssv2_test_indices(n, protocol.num_frames, clip, protocol.temporal_views)


def spatial_crop_starts(long_side: int, crop: int, num_crops: int) -> list[int]:
    """Offsets along the long side: int(j * (L - crop) / (num_crops - 1)); one crop = centre."""
    if num_crops == 1:
        return [int((long_side - crop) / 2.0)]
    step = (long_side - crop) / (num_crops - 1)
    return [int(j * step) for j in range(num_crops)]


def decode_all(path, size: int) -> np.ndarray:
    """Every frame of a video, short side resized to `size` (bilinear): uint8 [n, H', W', 3]. Raises
    VideoReadError."""
    with VideoReader(path, None) as reader:
        return np.stack([resize_short_side(f, size) for _, f in reader])


def views_from_frames(frames: np.ndarray, protocol: Protocol, crop: int) -> np.ndarray:
    """[n, H, W, 3] (short side = crop) -> [temporal_views * spatial_views, T, crop, crop, 3].

    View order: temporal-major, spatial-minor (view = k * spatial_views + j).
    """
    n, h, w = frames.shape[:3]
    if min(h, w) != crop:
        raise ValueError(f"frames must have short side {crop}, got {h}x{w}")
    starts = spatial_crop_starts(max(h, w), crop, protocol.spatial_views)
    out = []
    for k in range(protocol.temporal_views):
        clip = frames[temporal_indices(protocol, n, k)]
        for s in starts:
            out.append(clip[:, s:s + crop] if h >= w else clip[:, :, s:s + crop])
    return np.stack(out)


def center_view(frames: np.ndarray, protocol: Protocol, crop: int) -> np.ndarray:
    """One training view for linear probing: the middle temporal clip, centre crop. [T, crop, crop, 3]."""
    single = dataclasses.replace(protocol, temporal_views=1, spatial_views=1)
    return views_from_frames(frames, single, crop)[0]


# ------------------------------------------------------------------------------------------- model functions


class ClipClassifier:
    """A frozen backbone + pooling + head, compiled once per batch shape, data-parallel over `mesh`.

    `probs(frames)`: uint8 [B, T, S, S, 3] (B a multiple of the mesh's batch devices) -> softmax [B, C].
    `features(frames)`: -> pooled [B, D].
    """

    def __init__(self, config, params, head: Mapping | None = None, pooling: str = "mean", mesh=None):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.config, self.pooling = config, pooling
        self.mesh = mesh if mesh is not None else sharding.make_mesh()
        graphdef, state = nnx.split(model_from_flat_params(config, params))
        self._state = sharding.shard_state(state, self.mesh, "dp")
        self._replicated = sharding.replicated(self.mesh)
        self.head = None
        if head is not None:
            self.set_head(head)

        def feats(state, frames):
            return pool_clip(nnx.merge(graphdef, state), normalize_pixels(frames), pooling)

        def probs(head, features):
            return jax.nn.softmax(head_logits(head, features), axis=-1)

        # Two programs: the backbone (compiled once per batch shape, shared by features() and probs()) and
        # the small head.
        self._feats = jax.jit(feats)
        self._probs = jax.jit(probs)

    def set_head(self, head: Mapping) -> None:
        """The classification head (a head dict), replicated on the mesh."""
        self.head = jax.device_put(head, self._replicated)

    @property
    def batch_devices(self) -> int:
        return sharding.batch_devices(self.mesh)  # rows per host must be a multiple of it

    def _put(self, frames: np.ndarray):
        return jax.make_array_from_process_local_data(sharding.batch_sharding(self.mesh, frames.ndim), frames)

    @staticmethod
    def _local(x) -> np.ndarray:
        shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
        rows, seen = [], set()
        for s in shards:  # replicated axes give several shards with the same rows
            key = s.index[0].start or 0
            if key not in seen:
                seen.add(key)
                rows.append(np.asarray(s.data))
        return np.concatenate(rows).astype(np.float32)

    def features(self, frames: np.ndarray) -> np.ndarray:
        return self._local(self._feats(self._state, self._put(frames)))

    def probs(self, frames: np.ndarray) -> np.ndarray:
        if self.head is None:
            raise ValueError("no classification head: train one (linear probe) or load one")
        return self._local(self._probs(self.head, self._feats(self._state, self._put(frames))))


# ----------------------------------------------------------------------------------------------- evaluation


def host_slice(items: Sequence, process_index: int | None = None, process_count: int | None = None) -> list:
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    return list(items)[pi::pc]


def iter_padded_batches(rows: Iterable[tuple[object, np.ndarray]], batch_size: int):
    """(key, view) rows -> (keys, frames [batch_size, ...], valid [batch_size]) with zero-padded tails."""
    keys, views = [], []
    for key, view in rows:
        keys.append(key)
        views.append(view)
        if len(views) == batch_size:
            yield keys, np.stack(views), np.ones(batch_size, bool)
            keys, views = [], []
    if views:
        valid = np.zeros(batch_size, bool)
        valid[:len(views)] = True
        pad = np.zeros((batch_size - len(views),) + views[0].shape, views[0].dtype)
        yield keys + [None] * (batch_size - len(views)), np.concatenate([np.stack(views), pad]), valid


def evaluate(classifier, videos: Sequence[tuple[str, int]], protocol: Protocol, *, batch_size: int = 8,
             ks: Sequence[int] = (1, 5), progress: bool = True, out: str | os.PathLike | None = None,
             load_views: Callable | None = None, process_index: int | None = None,
             process_count: int | None = None, extra: Mapping | None = None, keep_scores: bool = False) -> dict:
    """Multi-view test of `videos` [(path, label)]; returns (and writes to `out` as JSON) the metrics.

    Each host evaluates its slice of the videos; view softmaxes are averaged per video; top-k counts are
    summed over hosts. Unreadable videos are listed under "failed" and left out of the metric (the original
    silently replaced them by random other videos).
    load_views(path) -> uint8 [V, T, S, S, 3] overrides the decoder (tests, pre-decoded data).
    keep_scores: also return the view-averaged softmax of this host's videos as result["scores"] [n, C]
    (in the order of result["per_video"]; not written to the JSON).
    """
    crop = classifier.config.image_size
    if batch_size % classifier.batch_devices:
        raise ValueError(f"batch_size {batch_size} must be a multiple of the {classifier.batch_devices} "
                         "batch devices per host")
    load_views = load_views or (lambda p: views_from_frames(decode_all(p, crop), protocol, crop))
    mine = host_slice(list(enumerate(videos)), process_index, process_count)
    sums: dict[int, np.ndarray] = {}
    seen: dict[int, int] = {}
    failed: list[dict] = []

    def rows():
        for idx, (path, _) in mine:
            try:
                views = load_views(path)
            except VideoReadError as err:
                failed.append({"video": str(path), "error": str(err)})
                continue
            for v in views:
                yield idx, v

    bar = tqdm(total=len(mine) * protocol.num_views, unit="view", desc=f"eval {protocol.name}",
               disable=not progress, file=sys.stderr, dynamic_ncols=True)
    try:
        for keys, frames, valid in iter_padded_batches(rows(), batch_size):
            probs = classifier.probs(frames)
            for key, p, ok in zip(keys, probs, valid):
                if not ok:
                    continue  # padding: masked out of the scores
                sums[key] = sums.get(key, 0.0) + p.astype(np.float64)
                seen[key] = seen.get(key, 0) + 1
            bar.update(int(valid.sum()))
    finally:
        bar.close()
    order = sorted(sums)
    per_video = []
    counts = np.zeros(len(ks) + 1, np.float64)  # correct@k..., n
    if order:
        scores = np.stack([sums[i] / seen[i] for i in order])
        labels = np.array([videos[i][1] for i in order])
        higher = (scores > scores[np.arange(len(order)), labels][:, None]).sum(1)
        for j, k in enumerate(ks):
            counts[j] = np.sum(higher < k)
        counts[-1] = len(order)
        for i, s, r in zip(order, scores, higher):
            per_video.append({"video": str(videos[i][0]), "label": int(videos[i][1]),
                              "pred": int(np.argmax(s)), "label_rank": int(r) + 1, "views": seen[i]})
    counts = _sum_over_hosts(counts)
    n = int(counts[-1])
    result = {"protocol": dataclasses.asdict(protocol), "pooling": classifier.pooling,
              "num_videos": n, "num_failed": int(_sum_over_hosts(np.array([len(failed)], np.float64))[0]),
              **{f"top{k}": (float(counts[j] / n) if n else float("nan")) for j, k in enumerate(ks)},
              **(dict(extra) if extra else {}),
              "failed": failed, "per_video": per_video}
    if out is not None:
        _write_json(out, result)
    if keep_scores:
        result["scores"] = scores if order else np.zeros((0, 0))
    return result


def _sum_over_hosts(x: np.ndarray) -> np.ndarray:
    if jax.process_count() == 1:
        return x
    return np.asarray(multihost_utils.process_allgather(x)).sum(0)


def _write_json(path, obj) -> None:
    path = pathlib.Path(path)
    if jax.process_count() > 1:  # per-video lists are per host; the summary is the same everywhere
        path = path.with_name(f"{path.stem}.host{jax.process_index()}{path.suffix}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------- linear probe


def extract_train_features(classifier, videos: Sequence[tuple[str, int]], protocol: Protocol, *,
                           batch_size: int = 8, progress: bool = True, load_view: Callable | None = None
                           ) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """One centre view per video -> (features [N, D], labels [N], failed). This host's slice only."""
    crop = classifier.config.image_size
    load_view = load_view or (lambda p: center_view(decode_all(p, crop), protocol, crop))
    failed = []
    labels = {}

    def rows():
        for i, (path, label) in enumerate(videos):
            try:
                view = load_view(path)
            except VideoReadError as err:
                failed.append({"video": str(path), "error": str(err)})
                continue
            labels[i] = label
            yield i, view

    feats = {}
    with tqdm(total=len(videos), unit="video", desc="features", disable=not progress, file=sys.stderr) as bar:
        for keys, frames, valid in iter_padded_batches(rows(), batch_size):
            f = classifier.features(frames)
            for k, row, ok in zip(keys, f, valid):
                if ok:
                    feats[k] = row
            bar.update(int(valid.sum()))
    order = sorted(feats)
    if not order:
        raise ValueError("no readable training video")
    return np.stack([feats[i] for i in order]), np.array([labels[i] for i in order]), failed


def gather_rows(feats: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate every host's (features, labels) rows in host order (identity on one host)."""
    if jax.process_count() == 1:
        return feats, labels
    counts = np.asarray(multihost_utils.process_allgather(np.array([len(labels)]))).reshape(-1)
    m = int(counts.max())
    pad_f = np.zeros((m, feats.shape[1]), np.float32)
    pad_f[:len(feats)] = feats
    pad_l = np.zeros(m, np.int64)
    pad_l[:len(labels)] = labels
    all_f = np.asarray(multihost_utils.process_allgather(pad_f))
    all_l = np.asarray(multihost_utils.process_allgather(pad_l))
    return (np.concatenate([all_f[h, :c] for h, c in enumerate(counts)]),
            np.concatenate([all_l[h, :c] for h, c in enumerate(counts)]))


def train_linear_probe(features: np.ndarray, labels: np.ndarray, num_classes: int, *, steps: int = 300,
                       learning_rate: float = 1e-2, weight_decay: float = 1e-4, batch_size: int | None = None,
                       seed: int = 0) -> dict:
    """Train the (fc_norm + classifier) head on frozen features with AdamW + softmax cross-entropy."""
    x = jnp.asarray(features, jnp.float32)
    y = jnp.asarray(labels, jnp.int32)
    head = jax.tree.map(jnp.asarray, init_head(x.shape[1], num_classes, seed))
    opt = optax.adamw(optax.cosine_decay_schedule(learning_rate, steps), weight_decay=weight_decay)
    opt_state = opt.init(head)

    def loss_fn(h, xb, yb):
        return optax.softmax_cross_entropy_with_integer_labels(head_logits(h, xb), yb).mean()

    def step(h, s, key):
        if batch_size is None or batch_size >= x.shape[0]:
            xb, yb = x, y
        else:
            idx = jax.random.choice(key, x.shape[0], (batch_size,), replace=False)
            xb, yb = x[idx], y[idx]
        loss, g = jax.value_and_grad(loss_fn)(h, xb, yb)
        updates, s = opt.update(g, s, h)
        return optax.apply_updates(h, updates), s, loss

    @jax.jit
    def run(h, s):
        key = jax.random.key(seed)
        return jax.lax.fori_loop(0, steps, lambda i, c: step(c[0], c[1], jax.random.fold_in(key, i))[:2], (h, s))

    head, _ = run(head, opt_state)
    return jax.tree.map(np.asarray, head)


# ---------------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m eval.action_recognition",
                                description="Action recognition: linear probe on frozen features and the "
                                "original multi-view test protocol (K400 4x3, SSv2 2x3).")
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("probe", "evaluate"):
        s = sub.add_parser(name)
        cli.add_checkpoint(s)
        s.add_argument("--dataset", choices=("k400", "ssv2"), required=True)
        s.add_argument("--val-list", required=True, help="annotation list: 'file,label' or 'id label' lines")
        s.add_argument("--root", default="", help="directory the list's file names are relative to")
        cli.add_out(s, help="results JSON", metavar="OUT.json")
        s.add_argument("--pooling", choices=POOLINGS[:2], default="mean")
        s.add_argument("--official-pooling-bug", action="store_true",
                       help="pool as the original AR model (needed to reproduce the released k400.pt/ssv2.pt)")
        s.add_argument("--num-frames", type=int, default=None, help="frames per view (default: the model's)")
        s.add_argument("--batch-size", type=int, default=None, help="views per batch per host "
                       "(default: 2 x the host's devices)")
        s.add_argument("--no-progress", action="store_true")
    probe = sub.choices["probe"]
    probe.add_argument("--train-list", required=True)
    probe.add_argument("--num-classes", type=int, default=None, help="default: max label + 1")
    probe.add_argument("--steps", type=int, default=300)
    probe.add_argument("--lr", type=float, default=1e-2)
    probe.add_argument("--weight-decay", type=float, default=1e-4)
    probe.add_argument("--save-head", default=None, help="write the trained head (.npz)")
    heads = sub.choices["evaluate"].add_mutually_exclusive_group(required=True)
    heads.add_argument("--head", help="head .npz (from probe --save-head)")
    heads.add_argument("--ar-checkpoint", help="an original finetuned AR checkpoint (k400.pt / ssv2.pt): backbone "
                       "and head from it, architecture from --checkpoint; use with --official-pooling-bug")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return cli.run(lambda: _main(args), errors=(ValueError, OSError, KeyError))


def _main(args) -> int:
    config, params = load_any(args.checkpoint)
    ar_head = None
    if getattr(args, "ar_checkpoint", None):
        params, ar_head = load_ar_checkpoint(args.ar_checkpoint, config)
    protocol = get_protocol(args.dataset, args.num_frames or config.num_frames)
    pooling = "official_bug" if args.official_pooling_bug else args.pooling
    clf = ClipClassifier(config, params, pooling=pooling)
    batch = args.batch_size or 2 * clf.batch_devices
    root = args.root
    val = read_annotation_list(args.val_list, root)
    extra = {"checkpoint": str(args.checkpoint), "val_list": str(args.val_list)}
    if args.command == "probe":
        train = read_annotation_list(args.train_list, root)
        num_classes = args.num_classes or 1 + max(l for _, l in train + val)
        feats, labels, failed = extract_train_features(clf, host_slice(train), protocol, batch_size=batch,
                                                       progress=not args.no_progress)
        feats, labels = gather_rows(feats, labels)  # every host trains the same head on all features
        head = train_linear_probe(feats, labels, num_classes, steps=args.steps, learning_rate=args.lr,
                                  weight_decay=args.weight_decay)
        if args.save_head:
            save_head(args.save_head, head)
        extra.update(train_list=str(args.train_list), train_videos=len(labels), train_failed=failed,
                     probe={"steps": args.steps, "lr": args.lr, "weight_decay": args.weight_decay})
    else:
        head = ar_head if ar_head is not None else load_head(args.head)
    clf.set_head(head)
    res = evaluate(clf, val, protocol, batch_size=batch, progress=not args.no_progress, out=args.out, extra=extra)
    print(f"{args.dataset}: top1 {res['top1']:.4f} top5 {res['top5']:.4f} over {res['num_videos']} videos "
          f"({res['num_failed']} unreadable) -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
