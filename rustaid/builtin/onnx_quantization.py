"""Batch-invariant int8 embedding models: per-token activation quantisation.

Models quantised with onnxruntime's dynamic int8 quantisation (`quantize_dynamic`) turn
each activation tensor into uint8 with DynamicQuantizeLinear, whose scale and zero point
come from the minimum and maximum of the whole tensor: of every text in the batch, and
of the padding. So the same text gets another vector alone than next to a longer one
(cosine about 0.99 for all-MiniLM-L6-v2), and search results shift with the batch a
chunk was indexed in.

The rewrite below replaces each DynamicQuantizeLinear with a per-token symmetric
quantisation: scale = max |x| over the token's features / 127, zero point 128. A token's
integers then depend on that token alone, the integer matrix products are exact, and
the scale is applied after them per token, as before per tensor. Vectors are the same
alone or in any batch (to float rounding), and no further from the fp32 model than the
original int8 graph. onnxruntime's MatMulIntegerToFloat fusion assumes one scale per
tensor, so the session must be created with it disabled (FUSIONS_TO_DISABLE).

The rewrite runs in a child process (`python -m rustaid.builtin.onnx_quantization
MODEL`, the model's bytes on its standard output), so `onnx` is never imported by the
daemon.
"""

from __future__ import annotations

import logging
import mmap
import subprocess
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FUSIONS_TO_DISABLE = ["MatMulIntegerToFloatFusion"]
# What may read the outputs of a DynamicQuantizeLinear for the rewrite to hold: the
# integer product (quantised values, zero point) and the Mul of the scales.
_CONSUMERS = {"MatMulInteger", "Mul"}
_PREFIX = "rustaid_ptq"
# Exit status of the child when the graph cannot be rewritten.
NOT_COVERED = 3


def has_dynamic_quantization(path: Path) -> bool:
    """True if the graph at `path` may quantise activations per tensor: its operator
    names are plain strings in the file, so a scan of the mapped file tells without
    parsing (and allocating) a large fp32 model."""
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        return m.find(b"DynamicQuantizeLinear") >= 0


def per_token_quantized(path: Path) -> bytes | None:
    """The model at `path` with per-token activation quantisation, serialised; None if
    some quantised activation feeds an operator the rewrite does not cover.

    The rewrite runs in a child process: `onnx` and the parsed graph would otherwise stay
    in the daemon's memory (about 15 MiB for the module alone) long after the model is
    unloaded."""
    child = subprocess.run(
        [sys.executable, "-m", "rustaid.builtin.onnx_quantization", str(path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
    )
    if child.returncode == NOT_COVERED:
        log.warning(
            "%s: %s; its embeddings will be computed one text at a time",
            path,
            child.stderr.decode(errors="replace").strip()[-300:],
        )
        return None
    if child.returncode != 0:
        raise RuntimeError(
            f"rewriting the quantisers of {path} failed: "
            f"{child.stderr.decode(errors='replace').strip()[-500:]}"
        )
    return child.stdout


def rewrite(path: Path) -> bytes | None:
    """per_token_quantized() in this process."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    consumers: dict[str, set[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    nodes: list[Any] = []
    count = 0
    for node in graph.node:
        if node.op_type != "DynamicQuantizeLinear":
            nodes.append(node)
            continue
        used = set().union(*(consumers.get(o, set()) for o in node.output))
        if not used <= _CONSUMERS:
            print(
                f"quantised activations feed {', '.join(sorted(used - _CONSUMERS))}",
                file=sys.stderr,
            )
            return None
        count += 1
        x = node.input[0]
        quantized, scale, zero_point = node.output
        p = f"{_PREFIX}{count}_"
        nodes += [
            helper.make_node("Abs", [x], [p + "abs"]),
            helper.make_node("ReduceMax", [p + "abs"], [p + "max"], axes=[-1], keepdims=1),
            helper.make_node("Max", [p + "max", f"{_PREFIX}_eps"], [p + "max_pos"]),
            helper.make_node("Div", [p + "max_pos", f"{_PREFIX}_127"], [scale]),
            helper.make_node("Div", [x, scale], [p + "scaled"]),
            helper.make_node("Round", [p + "scaled"], [p + "rounded"]),
            helper.make_node("Add", [p + "rounded", f"{_PREFIX}_128"], [p + "shifted"]),
            helper.make_node(
                "Clip", [p + "shifted", f"{_PREFIX}_0", f"{_PREFIX}_255"], [p + "clipped"]
            ),
            helper.make_node("Cast", [p + "clipped"], [quantized], to=TensorProto.UINT8),
        ]
        graph.initializer.append(numpy_helper.from_array(np.array(128, np.uint8), zero_point))
    constants = {"eps": 1e-12, "127": 127.0, "128": 128.0, "0": 0.0, "255": 255.0}
    for key, value in constants.items():
        graph.initializer.append(
            numpy_helper.from_array(np.array(value, np.float32), f"{_PREFIX}_{key}")
        )
    del graph.node[:]
    graph.node.extend(nodes)
    # Shapes recorded for the old scalars no longer hold: let onnxruntime infer them.
    del graph.value_info[:]
    data: bytes = model.SerializeToString()
    return data


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m rustaid.builtin.onnx_quantization MODEL.onnx", file=sys.stderr)
        return 2
    data = rewrite(Path(argv[0]))
    if data is None:
        return NOT_COVERED
    sys.stdout.buffer.write(data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
