"""TPU chip figures for roofline estimates, and compile-only TPU topologies (no TPU needed, only libtpu).

Per-chip figures from the public Cloud TPU documentation (the pages below, read 2026-12):

| chip | peak bf16 | HBM | HBM bandwidth | ICI (bidirectional, per chip) | source |
| --- | --- | --- | --- | --- | --- |
| v4  | 275 TFLOP/s | 32 GiB | 1200 GB/s | 600 GB/s (6 links x 400 Gb/s per direction) | cloud.google.com/tpu/docs/v4; ICI: the TPU v4 paper (Jouppi et al., ISCA 2023) as summarised at glennklockwood.com/garden/processors/TPUv4 (the Cloud page gives none) |
| v5e | 197 TFLOP/s | 16 GB  | 819 GB/s  | 400 GB/s | cloud.google.com/tpu/docs/v5e |
| v5p | 459 TFLOP/s | 95 GB  | 2765 GB/s | 1200 GB/s | cloud.google.com/tpu/docs/v5p (v5p-training) |
| v6e | 918 TFLOP/s | 32 GB  | 1638 GB/s | 800 GB/s | cloud.google.com/tpu/docs/v6e |

The HBM capacity used for "fits" is the one the TPU compiler itself enforces when it reports it (see
`streamformer_jax.train.aot`); these capacities are the fallback.
"""
from __future__ import annotations

import dataclasses
import os
import re


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    peak_bf16_flops: float  # per chip, FLOP/s
    hbm_bytes: int  # per chip
    hbm_bytes_per_s: float
    ici_bytes_per_s: float  # bidirectional, per chip
    source: str


GB, GIB = 10**9, 2**30
CHIPS = {
    "v4": Chip("TPU v4", 275e12, 32 * GIB, 1200e9, 600e9,
               "https://cloud.google.com/tpu/docs/v4 ; ICI: TPU v4 paper (ISCA 2023), 6 ICI links x 400 Gb/s/direction"),
    "v5e": Chip("TPU v5e", 197e12, 16 * GB, 819e9, 400e9, "https://cloud.google.com/tpu/docs/v5e"),
    "v5p": Chip("TPU v5p", 459e12, 95 * GB, 2765e9, 1200e9, "https://cloud.google.com/tpu/docs/v5p"),
    "v6e": Chip("TPU v6e", 918e12, 32 * GB, 1638e9, 800e9, "https://cloud.google.com/tpu/docs/v6e"),
}
# `v5litepod` is the API name of v5e.
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e"}
_TOPOLOGY = re.compile(r"^(v4|v5e|v5p|v6e|v5litepod|v5lite)[:-](\d+(?:x\d+)*)$")


class TopologyError(ValueError):
    """A topology name that cannot be compiled for (unknown, or libtpu missing)."""


def parse_topology(name: str) -> tuple[str, tuple[int, ...]]:
    """"v5e:2x2" -> ("v5e", (2, 2)); the chip generation and the chip grid."""
    m = _TOPOLOGY.match(name.strip().lower())
    if not m:
        raise TopologyError(f"topology {name!r}: expected GENERATION:AxB[xC] with GENERATION one of "
                            f"{sorted(CHIPS)}, e.g. v5e:2x2, v5p:4x4x4, v4:4x4x4")
    gen = _ALIASES.get(m.group(1), m.group(1))
    grid = tuple(int(x) for x in m.group(2).split("x"))
    if gen in ("v4", "v5p") and len(grid) != 3:
        raise TopologyError(f"topology {name!r}: {gen} slices are 3-D (e.g. {gen}:2x2x1)")
    if gen in ("v5e", "v6e") and len(grid) != 2:
        raise TopologyError(f"topology {name!r}: {gen} slices are 2-D (e.g. {gen}:2x2)")
    return gen, grid


def chip_for(name: str) -> Chip:
    return CHIPS[parse_topology(name)[0]]


def _quiet_libtpu(gen: str, chips: int) -> None:
    # Compile-only use: tell libtpu not to look for a TPU VM's metadata server (otherwise it warns at start-up).
    api_name = {"v5e": "v5litepod", "v6e": "v6e", "v5p": "v5p", "v4": "v4"}[gen]
    cores = chips * (2 if gen in ("v4", "v5p") else 1)
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", f"{api_name}-{cores}")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    # Several processes (e.g. a test run beside a sweep) may load libtpu at once for compiling only.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def topology_devices(name: str) -> list:
    """The compile-only devices of a TPU slice, one per chip (v4/v5p megacore: both TensorCores as one device,
    as a TPU VM presents them). Raises TopologyError with a one-line reason."""
    gen, grid = parse_topology(name)
    try:
        import libtpu  # noqa: F401  (optional dependency: the [tpu] extra)
    except ImportError:
        raise TopologyError("libtpu is not installed: compiling for a TPU topology needs XLA's TPU compiler "
                            "(pip install 'streamformer_jax[tpu]', i.e. jax[tpu]==0.10.2)") from None
    chips = 1
    for g in grid:
        chips *= g
    _quiet_libtpu(gen, chips)
    from jax.experimental import topologies

    kwargs = {"chip_config_name": "megacore"} if gen in ("v4", "v5p") else {}
    try:
        topo = topologies.get_topology_desc(topology_name=f"{gen}:{'x'.join(map(str, grid))}", platform="tpu",
                                            **kwargs)
    except Exception as e:  # noqa: BLE001 - libtpu raises assorted runtime errors for unsupported shapes
        raise TopologyError(f"topology {name!r}: libtpu cannot describe it ({str(e).splitlines()[0][:200]})") from None
    devices = list(topo.devices)
    if len(devices) != chips:
        raise TopologyError(f"topology {name!r}: expected {chips} devices (one per chip), libtpu gave {len(devices)}")
    return devices
