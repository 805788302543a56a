"""Corpus extraction (`python -m streamformer_jax.extract --videos ... --out DIR`): the same archives as the
single-video form for any slot, shard and worker count, failed videos reported, kill and resume, two processes,
bfloat16, usage errors, and the background decoder."""
import io
import json
import pathlib
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from streamformer_jax import corpus
from streamformer_jax.decode_pool import END, DecodePool
from streamformer_jax.extract import extract_features, main
from streamformer_jax.video import VideoReadError
from test_extract import REPO_ROOT, cli_env, encode_video

LENGTHS = (5, 9, 3, 12, 7, 4)


@pytest.fixture(scope="module")
def tiny_ckpt():
    from conftest import FIXTURES, require_shared

    return require_shared(FIXTURES / "tiny")


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    """Six short videos (two in a subfolder, different sizes and lengths) and a uint8 .npy array."""
    root = tmp_path_factory.mktemp("videos")
    (root / "sub").mkdir()
    for i, n in enumerate(LENGTHS):
        folder = root / "sub" if i % 3 == 1 else root
        encode_video(folder / f"clip{i}.mp4", n, 48 + 8 * (i % 2), 40)
    np.save(root / "array.npy", np.random.default_rng(0).integers(0, 256, (6, 40, 40, 3), dtype=np.uint8))
    return root


@pytest.fixture(scope="module")
def reference(tiny_ckpt, corpus_dir, tmp_path_factory):
    """Each video through the single-video form (`--video V --out OUT.npz`), per mode: {name: bytes}."""
    from streamformer_jax import FeatureExtractor

    fx = FeatureExtractor.from_checkpoint(tiny_ckpt)
    out = tmp_path_factory.mktemp("single")
    refs = {}
    for mode in ("stream", "clip"):
        refs[mode] = {}
        for video in sorted(corpus_dir.rglob("*")):
            if video.is_file():
                name = video.relative_to(corpus_dir).with_suffix(".npz")
                target = out / mode / name
                extract_features(fx, video, mode=mode, out=target)
                refs[mode][str(name)] = target.read_bytes()
    return refs


def archives(out_dir) -> dict:
    return {str(p.relative_to(out_dir)): p.read_bytes() for p in sorted(pathlib.Path(out_dir).rglob("*.npz"))}


def cli(ckpt, videos, out_dir, *extra):
    return main(["--checkpoint", str(ckpt), "--videos", str(videos), "--out", str(out_dir), *map(str, extra)])


# -- the same archives whatever the scheduling ------------------------------------------------------------------
def test_corpus_with_corrupt_and_missing_videos_equals_single_video_form(tiny_ckpt, corpus_dir, reference,
                                                                         tmp_path, capsys):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    videos = sorted(str(p) for p in corpus_dir.rglob("*") if p.is_file())
    listed = videos[:2] + [str(corrupt), str(tmp_path / "missing.mp4")] + videos[2:]
    list_file = tmp_path / "list.txt"
    list_file.write_text("# a comment\n" + "\n".join(listed) + "\n")
    out = tmp_path / "out"
    rc = cli(tiny_ckpt, list_file, out, "--slots", 3, "--workers", 2, "--root", corpus_dir.parent)
    err = capsys.readouterr().err
    assert rc == 1  # some videos failed; the others are done
    assert "videos:" in err and "frame" in err  # progress over videos and frames
    assert "7 videos extracted" in err and "2 failed" in err
    report = json.loads((out / "report.json").read_text())
    assert report["extracted"] == 7 and report["videos"] == 9
    reasons = {f["path"]: f["reason"] for f in report["failed"]}
    assert reasons == {str(corrupt): reasons[str(corrupt)], str(tmp_path / "missing.mp4"): "missing file"}
    assert reasons[str(corrupt)].startswith("cannot open container")
    # output names: paths under --root; the archives are byte-for-byte the single-video form's
    got = {k.split("/", 1)[1]: v for k, v in archives(out).items()}
    assert got == reference["stream"]
    assert not list(out.rglob("*.tmp"))


@pytest.mark.parametrize("mode", ["stream", "clip"])
def test_same_archives_for_any_slots_shards_and_workers(tiny_ckpt, corpus_dir, reference, tmp_path, mode):
    runs = {"slots1_inline": ("--slots", 1, "--workers", 0), "slots4_workers3": ("--slots", 4, "--workers", 3)}
    for name, extra in runs.items():
        assert cli(tiny_ckpt, corpus_dir, tmp_path / name, "--mode", mode, "--no-progress", *extra) == 0
        assert archives(tmp_path / name) == reference[mode], name
    # Two shards into one directory (as a SLURM array would): disjoint shares, complete together.
    shared = tmp_path / "sharded"
    for i in (0, 1):
        assert cli(tiny_ckpt, corpus_dir, shared, "--mode", mode, "--shard", f"{i}/2", "--slots", 2,
                   "--no-progress") == 0
        part = json.loads((shared / f"report.{i}-of-2.json").read_text())
        assert part["extracted"] == len(range(i, len(reference[mode]), 2)) and part["skipped"] == 0
    assert archives(shared) == reference[mode]
    merged = json.loads((shared / "report.json").read_text())
    assert merged["extracted"] == len(reference[mode]) and merged["shards_reported"] == ["0/2", "1/2"]


def test_batched_pool_agrees_to_float32_rounding(tiny_ckpt, corpus_dir, reference, tmp_path):
    for mode in ("stream", "clip"):
        out = tmp_path / mode
        assert cli(tiny_ckpt, corpus_dir, out, "--mode", mode, "--batched", "--slots", 3, "--no-progress") == 0
        for name, ref_bytes in reference[mode].items():
            ref = np.load(io.BytesIO(ref_bytes))
            with np.load(out / name) as got:
                np.testing.assert_array_equal(got["timestamps"], ref["timestamps"])
                for key in ("pooler_output", "last_hidden_state"):
                    np.testing.assert_allclose(got[key], ref[key], rtol=0, atol=1e-5, err_msg=f"{mode} {name}")


# -- kill and resume ---------------------------------------------------------------------------------------------
KILL_AFTER_TWO = textwrap.dedent(
    """
    import os, sys
    from streamformer_jax import corpus
    from streamformer_jax.extract import main

    commit, done = corpus._Output.commit, []

    def commit_then_die(self, compress):
        count = commit(self, compress)
        done.append(self.target)
        if len(done) == 2:
            os._exit(9)  # killed: no cleanup, the other slots' temporaries stay behind
        return count

    corpus._Output.commit = commit_then_die
    sys.exit(main(sys.argv[1:]))
    """
)


def test_killed_mid_run_then_rerun_gives_identical_outputs_and_recomputes_nothing(tiny_ckpt, corpus_dir, reference,
                                                                                  tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--checkpoint", str(tiny_ckpt), "--videos", str(corpus_dir), "--out-dir", str(out), "--slots", "3",
            "--no-progress"]
    proc = subprocess.run([sys.executable, "-c", KILL_AFTER_TWO, *args], cwd=REPO_ROOT, env=cli_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 9, proc.stderr[-3000:]
    finished = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in out.rglob("*.npz")}
    assert len(finished) == 2
    assert list(out.rglob(".*.tmp"))  # killed mid-run: other videos were half-way
    assert not (out / "report.json").exists()

    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 0
    assert f"{len(reference['stream']) - 2} videos extracted" in err and "2 already done" in err
    assert archives(out) == reference["stream"]
    for p, stamp in finished.items():  # the two finished archives were not rewritten
        assert (p.stat().st_mtime_ns, p.stat().st_ino) == stamp, p
    assert not list(out.rglob(".*.tmp"))  # the killed run's temporaries are gone
    report = json.loads((out / "report.json").read_text())
    assert report["skipped"] == 2 and report["extracted"] == len(reference["stream"]) - 2

    # A third run has nothing to do; a run with other options is refused instead of mixing features.
    assert main(args) == 0 and "0 videos extracted" in capsys.readouterr().err
    assert main(args + ["--fps", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "other options (fps differ" in err


# -- two processes under jax.distributed ---------------------------------------------------------------------------
HOST_SCRIPT = textwrap.dedent(
    """
    import sys
    import jax

    port, pid, ckpt, videos, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    from streamformer_jax.extract import main

    # no --shard: the share is the process index; the two local devices split the slots
    rc = main(["--checkpoint", ckpt, "--videos", videos, "--out-dir", out, "--slots", "2", "--devices", "all",
               "--no-progress"])
    assert rc == 0, rc
    print("HOST_OK", pid)
    """
)


@pytest.mark.slow
def test_two_processes_split_the_list(tiny_ckpt, corpus_dir, reference, tmp_path):
    from multihost import run_two_hosts

    script = tmp_path / "host.py"
    script.write_text(HOST_SCRIPT)
    out = tmp_path / "out"
    run_two_hosts(script, [tiny_ckpt, corpus_dir, out], timeout=600)
    assert archives(out) == reference["stream"]  # complete, and identical to the single-video form
    total = len(reference["stream"])
    for i in (0, 1):  # disjoint: each did exactly its share, nothing twice
        part = json.loads((out / f"report.{i}-of-2.json").read_text())
        assert part["extracted"] == len(range(i, total, 2)) and part["skipped"] == 0
    assert json.loads((out / "report.json").read_text())["extracted"] == total


# -- bfloat16 ----------------------------------------------------------------------------------------------------
def test_bfloat16_corpus_within_tolerance(tiny_ckpt, corpus_dir, reference, tmp_path):
    from test_stream_pool import assert_bf16_close

    out = tmp_path / "bf16"
    assert cli(tiny_ckpt, corpus_dir, out, "--dtype", "bfloat16", "--slots", 2, "--no-progress") == 0
    manifest = json.loads((out / "extraction.json").read_text())
    assert manifest["model"]["dtype"] == "bfloat16"
    got, ref = {}, {}
    for name, ref_bytes in reference["stream"].items():
        with np.load(out / name) as a, np.load(io.BytesIO(ref_bytes)) as b:
            for key in ("pooler_output", "last_hidden_state"):
                got.setdefault(key, []).append(a[key])
                ref.setdefault(key, []).append(b[key])
            np.testing.assert_array_equal(a["timestamps"], b["timestamps"])
    assert_bf16_close({k: np.concatenate(v) for k, v in got.items()},
                      {k: np.concatenate(v) for k, v in ref.items()}, "corpus")


# -- inputs and errors --------------------------------------------------------------------------------------------
def test_video_lists_and_output_names(corpus_dir, tmp_path, monkeypatch):
    videos, root = corpus.list_videos(corpus_dir)
    assert root == corpus_dir and len(videos) == len(LENGTHS) + 1
    names = corpus.output_names(videos, root)
    assert "sub/clip1.npz" in map(str, names) and "array.npz" in map(str, names)
    globbed, groot = corpus.list_videos(f"{corpus_dir}/**/*.mp4")
    assert groot == corpus_dir and len(globbed) == len(LENGTHS)
    monkeypatch.chdir(corpus_dir)
    listed = tmp_path / "list.txt"
    listed.write_text("sub/clip1.mp4\nclip0.mp4\nclip0.mp4\n")  # relative to the current directory; duplicate
    got, lroot = corpus.list_videos(listed)
    assert got == [corpus_dir / "sub/clip1.mp4", corpus_dir / "clip0.mp4"] and lroot == corpus_dir
    with pytest.raises(corpus.ExtractError, match="same output file"):
        corpus.output_names([tmp_path / "a.mp4", tmp_path / "a.avi"], tmp_path)
    with pytest.raises(corpus.ExtractError, match="no videos found"):
        corpus.list_videos(f"{tmp_path}/nothing/*.mp4")
    assert corpus.parse_shard("3/8") == (3, 8)
    with pytest.raises(ValueError, match="0 <= I < N"):
        corpus.parse_shard("8/8")


def test_cli_usage_errors(tiny_ckpt, corpus_dir, tmp_path, capsys):
    usage = [
        ["--checkpoint", tiny_ckpt, "--videos", corpus_dir],  # no --out
        ["--checkpoint", tiny_ckpt, "--videos", corpus_dir, "--out", tmp_path / "x.npz"],
        ["--checkpoint", tiny_ckpt, "--video", corpus_dir / "clip0.mp4", "--out", tmp_path / "x.npz", "--slots", 2],
        ["--checkpoint", tiny_ckpt, "--videos", corpus_dir, "--out-dir", tmp_path, "--shard", "2/2"],
        ["--checkpoint", tiny_ckpt, "--videos", corpus_dir, "--out-dir", tmp_path, "--devices", "0"],
    ]
    for argv in usage:
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in argv])
        assert exc.value.code == 2, argv
    capsys.readouterr()
    for argv, message in [
        (["--videos", tmp_path / "none" / "*.mp4"], "no videos found"),
        (["--videos", tmp_path / "absent.txt"], "no such directory or list file"),
        (["--videos", corpus_dir, "--checkpoint", tmp_path / "no_ckpt"], "cannot load checkpoint"),
    ]:
        full = ["--checkpoint", str(tiny_ckpt), "--out-dir", str(tmp_path / "o")] + [str(a) for a in argv]
        assert main(full) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err, err


def test_truncated_video_is_extracted_and_listed(tiny_ckpt, tmp_path):
    (tmp_path / "src").mkdir()
    full = encode_video(tmp_path / "src" / "full.mp4", 50, 64, 64, options={"movflags": "faststart"})
    cut = tmp_path / "src" / "cut.mp4"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    full.unlink()
    with pytest.warns(Warning, match="truncated"):
        summary = corpus.extract_corpus(tiny_ckpt, [cut], tmp_path / "out", slots=2, progress=False)
    assert summary["truncated"] == [str(cut)] and summary["extracted"] == [str(cut)]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["truncated"] == [str(cut)] and report["failed"] == []


# -- the background decoder -----------------------------------------------------------------------------------------
class FakeReader:
    """`n` frames (t, [i]) of which frame `fail_at` raises; records close()."""

    def __init__(self, name, n, fail_at=None, log=None):
        self.name, self.n, self.fail_at, self.log = name, n, fail_at, log

    def __iter__(self):
        for i in range(self.n):
            if i == self.fail_at:
                raise VideoReadError(self.name, f"decoding failed after {i} frames")
            yield float(i), np.array([i])

    def close(self):
        if self.log is not None:
            self.log.append(self.name)


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_decode_pool_keeps_each_video_in_order(workers):
    closed = []
    specs = {"a": (7, None), "b": (30, None), "c": (9, 4), "d": (1, None)}
    pool = DecodePool(lambda name: FakeReader(name, *specs[name], log=closed), workers, capacity=3, chunk=2)
    jobs = {name: pool.submit(name) for name in specs}
    got = {name: [] for name in specs}
    errors = {}
    live = list(specs)
    while live:  # round-robin consumer, as the corpus loop
        for name in list(live):
            try:
                item = pool.next(jobs[name])
            except VideoReadError as err:
                errors[name] = str(err)
                live.remove(name)
                pool.drop(jobs[name])
                continue
            if item is END:
                live.remove(name)
                pool.drop(jobs[name])
            else:
                got[name].append(int(item[1][0]))
    pool.close()
    assert got == {"a": list(range(7)), "b": list(range(30)), "c": [0, 1, 2, 3], "d": [0]}
    assert errors == {"c": "c: decoding failed after 4 frames"}
    assert sorted(closed) == sorted(specs)  # every reader closed


class SlowReader(FakeReader):
    """FakeReader whose frames each take `delay` seconds to decode."""

    def __init__(self, name, n, delay):
        super().__init__(name, n)
        self.delay = delay

    def __iter__(self):
        for item in super().__iter__():
            time.sleep(self.delay)
            yield item


def test_decode_pool_counts_the_wait_for_frames():
    # Inline (workers=0) the consumer decodes every frame itself: all of it is waiting. With a worker and a
    # consumer that asks only once everything is buffered, no decoding is left to wait for.
    inline = DecodePool(lambda name: SlowReader(name, 5, 0.02), 0)
    job = inline.submit("a")
    while inline.next(job) is not END:
        pass
    inline.close()
    assert inline.waited_s >= 5 * 0.02

    threaded = DecodePool(lambda name: SlowReader(name, 5, 0.02), 1, capacity=8)
    job = threaded.submit("a")
    while not job.done:
        time.sleep(0.01)
    while threaded.next(job) is not END:
        pass
    threaded.close()
    assert threaded.waited_s == 0.0
