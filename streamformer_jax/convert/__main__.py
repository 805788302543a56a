"""`python -m streamformer_jax.convert`: checkpoint converters (official PyTorch / Hugging Face <-> ours).

User errors (missing files, bad JSON, key or shape mismatches, bad options) are reported as
`error: ...` on stderr with exit code 2 and no traceback (`--traceback` shows it); see `streamformer_jax.cli`.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys

from streamformer_jax import cli
from streamformer_jax.checkpoint import load_any, save_checkpoint
from streamformer_jax.convert import torch_io
from streamformer_jax.convert.keymap import OFFICIAL_PREFIX, backbone_rules, buffer_keys, official_to_ours, \
    ours_to_official
from streamformer_jax.convert.official import write_official_dir
from streamformer_jax.convert.pretrain import (ConversionError, extras_path, infer_config, nonstandard_buffers,
                                               read_extras, read_safetensors_dir, split_backbone, summarize_extras,
                                               write_extras)
from streamformer_jax.convert.siglip import import_siglip
from streamformer_jax.models.config import PRESETS, StreamFormerConfig, get_preset
from streamformer_jax.models.streamformer import init_model
from streamformer_jax.param_tree import flat_params

EPILOG = """\
examples:
  # official Hugging Face backbone directory (config.json + model.safetensors) -> our checkpoint
  python -m streamformer_jax.convert import-pytorch --src streamformer-timesformer --out ckpt/streamformer

  # pretraining checkpoint (torch.save dict with "model"); the config is inferred from the shapes unless
  # --config is given; task heads / text encoder go to ckpt/pretrain/pretrain_extras.safetensors
  python -m streamformer_jax.convert import-pytorch --src checkpoint-epoch.pth --out ckpt/pretrain
  python -m streamformer_jax.convert import-pytorch --src checkpoint-epoch.pth --config config.json --out ckpt/pretrain

  # our checkpoint -> a directory TimesformerMultiTaskingModelSigLIP.from_pretrained loads strictly,
  # or -> a pretraining-style .pth ({"model": ...}, extras restored)
  python -m streamformer_jax.convert export-pytorch --checkpoint ckpt/streamformer --out hf_out
  python -m streamformer_jax.convert export-pytorch --checkpoint ckpt/pretrain --out checkpoint-restored.pth

  # Hugging Face SigLIP (SiglipModel or SiglipVisionModel save_pretrained dir) -> StreamFormer start point
  python -m streamformer_jax.convert import-siglip --src siglip-base-patch16-224 --out ckpt/siglip16 --seed 0

  # a randomly initialised checkpoint of a preset (tiny | small | vit_b16), for demos without downloads
  python -m streamformer_jax.convert init-random --preset tiny --out ckpt/tiny

(--dst is accepted for --out, and --src for export-pytorch's --checkpoint.)
"""


def _prepare_dst(dst: pathlib.Path, overwrite: bool) -> None:
    if dst.exists() and (dst.is_file() or any(dst.iterdir())) and not overwrite:
        raise ConversionError(f"{dst} already exists and is not empty (pass --overwrite to replace it)")


def _remove(path: pathlib.Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _config_line(config) -> str:
    d = config.to_dict()
    keys = ("hidden_size", "num_layers", "num_heads", "mlp_size", "image_size", "patch_size", "num_frames",
            "lora_rank", "causal_temporal", "gelu_approximate")
    return ", ".join(f"{k}={d[k]}" for k in keys)


def _write_ours(dst: pathlib.Path, config, params, extras, aliases, order, source: dict) -> None:
    save_checkpoint(dst, config, params, extra={"source": source})
    extras_path(dst).unlink(missing_ok=True)  # never leave a stale file from an earlier import
    print(f"wrote our checkpoint {dst} ({len(params)} parameters)")
    print(f"  config: {_config_line(config)}")
    if extras or aliases:
        path = write_extras(dst, extras, aliases, order, source.get("path", ""))
        keys = [k for k in order if k in extras or k in aliases] if order else [*extras, *aliases]
        print(f"kept {len(keys)} non-backbone entries ({len(extras)} tensors stored, {len(aliases)} aliases) "
              f"in {path}:")
        print("\n".join(summarize_extras(keys, aliases)))


def cmd_import_pytorch(args) -> int:
    src, dst = pathlib.Path(args.src), pathlib.Path(args.out)
    _prepare_dst(dst, args.overwrite)
    config = StreamFormerConfig.from_hf_json(args.config) if args.config else None
    if src.is_dir():
        if config is None:
            if not (src / "config.json").is_file():
                raise ConversionError(f"{src}: no config.json (an official directory has config.json + "
                                      "model.safetensors; or pass --config)")
            config = StreamFormerConfig.from_hf_json(src / "config.json")
        state = read_safetensors_dir(src)
        backbone, extras = split_backbone(state)
        aliases, order, kind = {}, list(state), "official_dir"
    elif src.is_file():
        state, ignored = torch_io.load_pth(src)
        backbone_t, extras_t = split_backbone(state)
        prefixed = bool(extras_t) or any(k.startswith(OFFICIAL_PREFIX) for k in state)
        backbone_keys = {OFFICIAL_PREFIX + k for k in backbone_t} if prefixed else set(state)
        aliases = {a: c for a, c in torch_io.resolve_aliases_of(state, backbone_keys).items() if a not in backbone_keys}
        backbone, not_f32 = {}, []
        for k, t in backbone_t.items():
            backbone[k], exact = torch_io.to_numpy_f32(t)
            if not exact:
                not_f32.append(k)
        if not_f32:
            print(f"note: {len(not_f32)} backbone tensors were not float32 and were cast (export will not be "
                  "bit-exact)")
        if ignored:
            print(f"note: ignored top-level entries of {src.name}: {', '.join(ignored)}")
        extras = {k: v for k, v in extras_t.items() if k not in aliases}
        order, kind = list(state), "pth"
        if config is None:
            config, notes = infer_config({k: tuple(v.shape) for k, v in backbone.items()}, args.num_heads)
            print("config inferred from the tensor shapes (pass --config CONFIG_JSON to set it):")
            print(json.dumps(config.to_hf_dict(), indent=2, sort_keys=True))
            for n in notes:
                print(f"  note: {n}")
    else:
        raise ConversionError(f"{src}: no such file or directory")
    params = official_to_ours(backbone, config, source=str(src))
    bad = nonstandard_buffers(backbone, config)
    if bad:
        print(f"note: {len(bad)} mask buffers are not tril(ones); an export writes tril (unused by the forward)")
    _write_ours(dst, config, params, extras, aliases, order, {"kind": kind, "path": str(src.absolute())})
    return 0


def cmd_export_pytorch(args) -> int:
    src, dst = pathlib.Path(args.checkpoint), pathlib.Path(args.out)
    _prepare_dst(dst, args.overwrite)
    config, params = load_any(src)
    if dst.suffix in (".pth", ".pt"):
        torch_io.require_torch()
        extras = read_extras(src, framework="pt")
        tensors, aliases, order = extras if extras else ({}, {}, [])
        _remove(dst)
        n = torch_io.save_pth(dst, ours_to_official(params, config), tensors, aliases, order)
        print(f"wrote {dst} ({{'model': {n} entries}}: backbone with 'timesformer.' prefix"
              + (f", {len(tensors)} extra tensors, {len(aliases)} aliases)" if extras else ")"))
        return 0
    extras = read_extras(src)
    if dst.is_file():
        _remove(dst)
    write_official_dir(dst, config, params)
    n_buffers = len(buffer_keys(config))
    n_tensors = len({r.theirs for r in backbone_rules(config)}) + n_buffers
    print(f"wrote {dst}/config.json + model.safetensors ({n_tensors} tensors incl. "
          f"{n_buffers} mask buffers; load with TimesformerMultiTaskingModelSigLIP.from_pretrained)")
    if extras:
        print(f"note: {len(extras[0]) + len(extras[1])} pretraining extras in {src} are not part of the backbone "
              "directory; export to a .pth path to include them")
    return 0


def cmd_import_siglip(args) -> int:
    if args.num_frames < 1 or args.lora_rank < 0:
        raise ConversionError("--num-frames must be >= 1 and --lora-rank >= 0")
    src, dst = pathlib.Path(args.src), pathlib.Path(args.out)
    _prepare_dst(dst, args.overwrite)
    config, params, extras, notes = import_siglip(src, args.num_frames, args.lora_rank, args.seed,
                                                  args.zero_time_embeddings)
    for n in notes:
        print(f"note: {n}")
    _write_ours(dst, config, params, extras, {}, list(extras),
                {"kind": "siglip", "path": str(src.absolute()), "seed": args.seed})
    print(f"  new temporal parameters ~ N(0, 0.02^2) (seed {args.seed}), temporal LayerNorm 1/0, gates 0"
          + (f", LoRA rank {args.lora_rank} (B = 0)" if args.lora_rank else ""))
    return 0


def cmd_init_random(args) -> int:
    dst = pathlib.Path(args.out)
    _prepare_dst(dst, args.overwrite)
    config = get_preset(args.preset)
    save_checkpoint(dst, config, flat_params(init_model(config, args.seed)),
                    {"source": {"kind": "random", "preset": args.preset, "seed": args.seed}})
    print(f"wrote {dst}: randomly initialised '{args.preset}' model (official init, seed {args.seed})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(
        prog="python -m streamformer_jax.convert",
        description="StreamFormer checkpoint converters: official PyTorch / Hugging Face formats <-> ours.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traceback", action="store_true", help="show the Python traceback on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("import-pytorch", help="official HF directory or pretraining .pth -> our checkpoint",
                       description="Official HF backbone directory (config.json + model.safetensors, keys with or "
                       "without 'timesformer.') or pretraining checkpoint .pth (needs torch) -> our checkpoint.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True, help="official directory or .pth file")
    cli.add_out(p, "--dst", help="our checkpoint directory to write", metavar="CKPT")
    p.add_argument("--config", help="official config.json to use (default: SRC/config.json; for .pth: inferred "
                   "from the tensor shapes)")
    p.add_argument("--num-heads", type=int, help="attention heads when inferring the config (default hidden/64)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty OUT")
    p.set_defaults(func=cmd_import_pytorch)

    p = sub.add_parser("export-pytorch", help="our checkpoint -> official HF directory (or .pth)",
                       description="Our checkpoint (or an official directory) -> config.json + model.safetensors "
                       "loadable by TimesformerMultiTaskingModelSigLIP.from_pretrained with strict keys; an OUT "
                       "ending in .pth writes the pretraining layout {'model': ...} with the kept extras.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_checkpoint(p, "--src", help="our checkpoint directory (or an official directory)")
    cli.add_out(p, "--dst", help="directory to write, or a .pth file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty OUT")
    p.set_defaults(func=cmd_export_pytorch)

    p = sub.add_parser("import-siglip", help="Hugging Face SigLIP directory -> StreamFormer start point",
                       description="SigLIP (SiglipModel or SiglipVisionModel save_pretrained directory) -> our "
                       "checkpoint, as tools/initialize_SigLIP_weights.py: fused [q;k;v], new temporal parameters "
                       "~ N(0, 0.02^2), temporal LayerNorm 1/0, gates 0, exact GELU. SiglipModel's text tower and "
                       "logit scale/bias are kept in pretrain_extras.safetensors.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--src", required=True, help="SigLIP directory (config.json + model.safetensors)")
    cli.add_out(p, "--dst", help="our checkpoint directory to write", metavar="CKPT")
    p.add_argument("--seed", type=int, default=0, help="seed of the new temporal parameters (default 0)")
    p.add_argument("--num-frames", type=int, default=16, help="time-embedding rows (default 16)")
    p.add_argument("--lora-rank", type=int, default=0, help="spatial LoRA rank, 0 = none (default; the official "
                   "class supports 0 or 32)")
    p.add_argument("--zero-time-embeddings", action="store_true",
                   help="time embeddings 0 instead of N(0, 0.02^2): the result reproduces SigLIP frame by frame")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty OUT")
    p.set_defaults(func=cmd_import_siglip)

    p = sub.add_parser("init-random", help="a randomly initialised checkpoint of a preset (demos, tests)",
                       description="Our checkpoint of a randomly initialised model (official initialisation: "
                       "temporal gates 0, LoRA B = 0), for demos and smoke tests without downloads.")
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    cli.add_out(p, "--dst", help="our checkpoint directory to write", metavar="CKPT")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty OUT")
    p.set_defaults(func=cmd_init_random)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # ConversionError / ParameterMismatchError are ValueErrors
    return cli.run(lambda: args.func(args), traceback=args.traceback)


if __name__ == "__main__":
    sys.exit(main())
