"""What a compiled XLA executable tells about one device: memory, FLOPs, bytes accessed and collectives.

`collectives(hlo_text)` reads the optimised HLO (`compiled.as_text()`): every all-gather, all-reduce,
reduce-scatter, all-to-all and collective-permute (synchronous or `-start` async), counted as often as it runs
(a while loop's body counts its `known_trip_count` times), with its payload bytes (the op's result per device)
and an estimate of the bytes each device puts on the wire for ring algorithms over a group of g devices:
all-gather (g-1)/g x result, reduce-scatter (g-1) x result, all-reduce 2 (g-1)/g x size, all-to-all
(g-1)/g x size, collective-permute the whole payload.
"""
from __future__ import annotations

import collections
import re
from typing import Any

KINDS = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
          "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1, "s4": 0.5, "u4": 0.5}
_ARRAY = re.compile(r"\b(" + "|".join(sorted(_BYTES, key=len, reverse=True)) + r")\[([0-9,]*)\]")
_COMP_HEAD = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*?)\s+([a-z][\w\-]*)\((.*)$")
_CALLS = re.compile(r"\b(calls|body|to_apply|true_computation|false_computation|branch_computations|"
                    r"called_computations)=(\{[^}]*\}|%?[\w.\-]+)")
_CONDITION = re.compile(r"\bcondition=%?([\w.\-]+)")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')


def _array_bytes(type_str: str) -> list[float]:
    out = []
    for dtype, dims in _ARRAY.findall(type_str):
        n = 1
        for d in (x for x in dims.split(",") if x):
            n *= int(d)
        out.append(n * _BYTES[dtype])
    return out


def _group_size(attrs: str, num_devices: int) -> int:
    m = re.search(r"replica_groups=\{(\{[^}]*\})", attrs)
    if m:
        return max(1, len([x for x in m.group(1).strip("{}").split(",") if x.strip()]))
    m = re.search(r"replica_groups=\[(\d+),(\d+)\]<=", attrs)  # iota form: [groups, group size]
    if m:
        return int(m.group(2))
    m = re.search(r"replica_groups=mesh\[([^\]]*)\]\s*\{([^}]*)\}", attrs)  # mesh form: axes in the group
    if m:
        sizes = dict((k.strip(" '\""), int(v)) for k, v in (kv.split("=") for kv in m.group(1).split(",")))
        size = 1
        for axis in m.group(2).split(","):
            size *= sizes.get(axis.strip(" '\""), 1)
        return size
    return num_devices  # no groups: all devices


def _payload(kind: str, opcode: str, result_type: str) -> float:
    arrays = [b for b in _array_bytes(result_type) if b > 8]  # drop the async ops' u32[] context scalars
    if not arrays:
        arrays = _array_bytes(result_type)
    if opcode.endswith("-start") and kind in ("all-gather", "collective-permute") and len(arrays) >= 2:
        arrays = arrays[len(arrays) // 2:]  # (operands..., results...)
    return float(sum(arrays))


def _wire(kind: str, payload: float, g: int) -> float:
    if g <= 1:
        return 0.0
    return {"all-gather": payload * (g - 1) / g, "reduce-scatter": payload * (g - 1),
            "all-reduce": 2 * payload * (g - 1) / g, "all-to-all": payload * (g - 1) / g,
            "collective-permute": payload}[kind]


def collectives(hlo_text: str, num_devices: int) -> dict[str, dict[str, float]]:
    """{kind: {"count", "bytes", "wire_bytes"}} per device for one execution of the HLO module."""
    comps, runs = _executions(hlo_text)
    out = {k: {"count": 0.0, "bytes": 0.0, "wire_bytes": 0.0} for k in KINDS}
    for name, times in runs.items():
        for result_type, opcode, rest in comps[name]:
            kind = opcode[:-len("-start")] if opcode.endswith("-start") else opcode
            if kind not in KINDS:
                continue
            payload = _payload(kind, opcode, result_type)
            g = _group_size(rest, num_devices)
            out[kind]["count"] += times
            out[kind]["bytes"] += times * payload
            out[kind]["wire_bytes"] += times * _wire(kind, payload, g)
    return {k: {"count": int(round(v["count"])), "bytes": int(v["bytes"]), "wire_bytes": int(v["wire_bytes"])}
            for k, v in out.items() if v["count"]}


def _executions(hlo_text: str):
    """(instructions by computation, executions of each computation per run of the module)."""
    comps: dict[str, list] = {}
    entry = None
    current = None
    for line in hlo_text.splitlines():
        head = _COMP_HEAD.match(line)
        if head and not line.startswith(" "):
            current = head.group(1)
            comps[current] = []
            if line.startswith("ENTRY"):
                entry = current
            continue
        if current is None:
            continue
        ins = _INSTR.match(line)
        if ins:
            comps[current].append(ins.groups())
    if entry is None:
        raise ValueError("no ENTRY computation in the HLO text")

    # Executions of each computation: entry once; a while body `known_trip_count` times per execution of the
    # while; everything else (fusions, calls, async wrappers, conditionals) once per call.
    runs: dict[str, float] = collections.defaultdict(float)

    def trip_count(rest: str) -> float:
        t = _TRIP.search(rest)
        if t:
            return float(t.group(1))
        # No known_trip_count (e.g. a windowed-einsum loop): the loop bound is the integer constant its
        # condition compares against; 1 if that is not clear.
        c = _CONDITION.search(rest)
        consts = [int(m.group(1)) for _, op, r in comps.get(c.group(1) if c else "", ()) if op == "constant"
                  for m in [re.match(r"\s*(-?\d+)\)", r)] if m]
        return float(consts[0]) if len(consts) == 1 and consts[0] > 0 else 1.0

    def visit(name: str, times: float, depth: int = 0) -> None:
        if name not in comps or depth > 64:
            return
        runs[name] += times
        for result_type, opcode, rest in comps[name]:
            for key, callees in _CALLS.findall(rest):
                if key == "to_apply":
                    continue  # reducers / comparators: scalar computations, no collectives
                trip = trip_count(rest) if (opcode == "while" and key == "body") else 1.0
                for callee in callees.strip("{}").split(","):
                    visit(callee.strip().lstrip("%"), times * trip, depth + 1)

    visit(entry, 1.0)
    return comps, runs


def memory(compiled) -> dict[str, int]:
    mem = compiled.memory_analysis()
    if mem is None:
        return {}
    fields = {"argument_bytes": "argument_size_in_bytes", "output_bytes": "output_size_in_bytes",
              "temp_bytes": "temp_size_in_bytes", "alias_bytes": "alias_size_in_bytes",
              "code_bytes": "generated_code_size_in_bytes"}
    return {k: int(getattr(mem, v, 0) or 0) for k, v in fields.items()}


def cost(compiled) -> dict[str, float]:
    c = compiled.cost_analysis()
    c = c[0] if isinstance(c, (list, tuple)) else (c or {})
    return {"flops": float(c.get("flops", 0.0)), "bytes_accessed": float(c.get("bytes accessed", 0.0))}


def summarize(compiled, num_devices: int) -> dict[str, Any]:
    """Memory, XLA's costs and the collectives. XLA's cost analysis counts a while loop's body once, so for a
    program with loops (a scanned model) `flops` / `bytes_accessed` cover one trip: `loop_trips` says so."""
    text = compiled.as_text()
    _, runs = _executions(text)
    trips = max(runs.values(), default=1.0)
    return {**memory(compiled), **cost(compiled), "collectives": collectives(text, num_devices),
            "loop_trips": int(trips), "costs_counted": "xla" if trips <= 1 else "xla, loop bodies once"}
