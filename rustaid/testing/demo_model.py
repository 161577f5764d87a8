"""`python -m rustaid.testing.demo_model DATA_DIR`: give an empty models folder a model.

Writes a synthetic GGUF with the shapes of SmolLM2-135M (Q8_0, about 145 MB) so the
daemon has something real to serve: real llama.cpp, real speed, random weights (so the
text it writes is gibberish). Does nothing when the folder already holds a .gguf.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEMO_NAME = "demo-smollm2-135m-synthetic.gguf"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("data_dir", type=Path)
    args = parser.parse_args(argv)
    models = args.data_dir / "models"
    models.mkdir(parents=True, exist_ok=True)
    existing = sorted(models.rglob("*.gguf"))
    if existing:
        print(f"models folder {models} has {len(existing)} model(s); no demo model needed")
        return 0
    from rustaid.testing.synthetic import SMOLLM2_135M, write_llama_gguf

    print(
        f"models folder {models} is empty: creating a SYNTHETIC demo model (random weights, "
        "SmolLM2-135M shapes, Q8_0). It runs at real speed but its text is gibberish.\n"
        f"Drop a real .gguf model into {models} for real answers.",
        file=sys.stderr,
    )
    path = write_llama_gguf(models / DEMO_NAME, SMOLLM2_135M, file_type="Q8_0", name="demo")
    print(f"created {path} ({path.stat().st_size / 1e6:.0f} MB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
