"""Online action detection data: the MAT/LSTR layout (features, per-frame targets, `data_info.json`).

What the user supplies (not in the StreamFormer repository; take them from the LSTR / MAT release):

* `--features DIR`: one `<session>.npy` float32 [N, D] per video at the annotation rate (4 per second),
  e.g. written by `python -m eval.oad_extract` (24 fps, 6-frame chunks: 4 features per second);
* `--annotations A`: the dataset folder of LSTR's `data/` tree, holding `target_perframe/<session>.npy`
  ([N, C] one-hot / multi-hot per frame at 4 fps, class 0 = background; THUMOS class 21 = ambiguous), with
  `data_info.json` in it or in its parent (LSTR keeps `data/data_info.json` beside `data/THUMOS/`);
  `A` may also be the `data_info.json` itself when its `data_root` entry points at the folder. `data_info.json`
  is LSTR's: `{"THUMOS": {"class_names", "num_classes", "ignore_index", "metrics": "AP" | "cAP", "fps",
  "train_session_set", "test_session_set", "data_root"}, "TVSeries": {...}}` (or one such dict).

A session listed in `data_info.json` whose feature or target file is missing is left out and reported; feature
and target lengths that differ are cut to the shorter one and counted.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np

TARGETS_DIR = "target_perframe"


class OADDataError(ValueError):
    """Unusable OAD data (reported as one `error:` line)."""


@dataclasses.dataclass
class DataInfo:
    name: str
    class_names: list[str]
    ignore_index: int | None  # THUMOS: 21 (ambiguous); TVSeries: None (LSTR's -100)
    metric: str  # "AP" (THUMOS mAP) or "cAP" (TVSeries mcAP)
    fps: int
    train_sessions: list[str]
    test_sessions: list[str]
    targets_dir: pathlib.Path

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _pick(table: dict, name: str | None, path) -> tuple[str, dict]:
    if "class_names" in table:
        return name or "custom", table
    if name:
        if name not in table:
            raise OADDataError(f"{path}: no dataset {name!r} (has {sorted(table)})")
        return name, table[name]
    if len(table) == 1:
        return next(iter(table.items()))
    raise OADDataError(f"{path}: several datasets ({sorted(table)}); pick one with --dataset")


def load_data_info(annotations, dataset: str | None = None) -> DataInfo:
    """See the module docstring for the accepted layouts."""
    a = pathlib.Path(annotations)
    if not a.exists():
        raise FileNotFoundError(f"{a}: no such file or directory")
    if a.is_file():
        info_path, folder = a, None
    else:
        candidates = [a / "data_info.json", a.parent / "data_info.json"]
        info_path = next((c for c in candidates if c.is_file()), None)
        if info_path is None:
            raise OADDataError(f"{a}: no data_info.json in it or in its parent (take LSTR's data/data_info.json)")
        folder = a
        dataset = dataset or (a.name if a.name in json.loads(info_path.read_text()) else None)
    try:
        table = json.loads(info_path.read_text())
    except json.JSONDecodeError as e:
        raise OADDataError(f"{info_path}: invalid JSON ({e.msg})") from None
    name, d = _pick(table, dataset, info_path)
    try:
        if folder is None:
            root = pathlib.Path(d.get("data_root", name))
            folder = root if root.is_absolute() else info_path.parent / root
            if not folder.is_dir() and (info_path.parent.parent / root).is_dir():
                folder = info_path.parent.parent / root  # LSTR: data_root "data/THUMOS" relative to the repo
        targets = folder / TARGETS_DIR if (folder / TARGETS_DIR).is_dir() else folder
        ignore = int(d.get("ignore_index", -100))
        info = DataInfo(name=name, class_names=list(d["class_names"]),
                        ignore_index=ignore if 0 <= ignore < len(d["class_names"]) else None,
                        metric=str(d.get("metrics", "AP")), fps=int(d.get("fps", 4)),
                        train_sessions=list(d["train_session_set"]), test_sessions=list(d["test_session_set"]),
                        targets_dir=targets)
    except (KeyError, TypeError) as e:
        raise OADDataError(f"{info_path}: dataset {name!r} lacks {e}") from None
    if info.metric not in ("AP", "cAP"):
        raise OADDataError(f"{info_path}: metrics must be AP or cAP, got {info.metric!r}")
    if not targets.is_dir():
        raise OADDataError(f"{targets}: no target_perframe folder")
    return info


@dataclasses.dataclass
class Session:
    name: str
    features: np.ndarray  # float32 [n, D]
    targets: np.ndarray  # float32 [n, C]


def load_sessions(info: DataInfo, features_dir, split: str) -> tuple[list[Session], dict]:
    """(sessions, report) of one split ("train" | "test"); report lists missing files and length mismatches."""
    names = info.train_sessions if split == "train" else info.test_sessions
    fdir = pathlib.Path(features_dir)
    if not fdir.is_dir():
        raise FileNotFoundError(f"{fdir}: no such feature directory")
    sessions, missing, cut = [], [], []
    dim = None
    for name in names:
        fp, tp = fdir / f"{name}.npy", info.targets_dir / f"{name}.npy"
        if not fp.is_file() or not tp.is_file():
            missing.append(name)
            continue
        f, t = _load_npy(fp, mmap=True), _load_npy(tp)
        if f.ndim != 2 or t.ndim != 2 or t.shape[1] != info.num_classes:
            raise OADDataError(f"{name}: features {f.shape} must be [N, D] and targets {t.shape} [N, "
                               f"{info.num_classes}]")
        if dim is not None and f.shape[1] != dim:
            raise OADDataError(f"{fp}: feature size {f.shape[1]}, the other sessions have {dim}")
        dim = f.shape[1]
        n = min(len(f), len(t))
        if len(f) != len(t):
            cut.append({"session": name, "features": int(len(f)), "targets": int(len(t))})
        sessions.append(Session(name, np.asarray(f[:n], np.float32), np.asarray(t[:n], np.float32)))
    if not sessions:
        raise OADDataError(f"no {split} session has both {fdir}/<session>.npy and {info.targets_dir}/<session>.npy "
                           f"({len(names)} listed in data_info.json)")
    return sessions, {"split": split, "sessions": len(sessions), "missing": missing, "length_mismatch": cut}


def _load_npy(path: pathlib.Path, mmap: bool = False) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None)
    except (OSError, ValueError) as e:
        raise OADDataError(f"{path}: unreadable ({e})") from None


def epoch_windows(sessions, work_len: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """The original training windows: per session a random offset in [0, Nw), then consecutive windows
    [s, s + Nw) with s + Nw < n; returned shuffled as (session index, start)."""
    out = []
    for k, s in enumerate(sessions):
        seed = int(rng.integers(work_len))
        n = len(s.targets)
        out.extend((k, start) for start, _ in zip(range(seed, n, work_len), range(seed + work_len, n, work_len)))
    order = rng.permutation(len(out))
    return [out[i] for i in order]
