"""``python -m dode.metrics digits-reference [--classifier PATH] [--out PATH]``: (re)write the FD reference
statistics (the digits' train split in the digit classifier's features), which depend on its weights."""

import argparse

from dode.metrics import DIGITS_REFERENCE_PATH, write_digits_reference
from dode.metrics.classifier import CLASSIFIER_PATH


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dode.metrics", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ref = sub.add_parser("digits-reference", help="write the FD reference statistics")
    ref.add_argument("--classifier", type=str, default=str(CLASSIFIER_PATH))
    ref.add_argument("--out", type=str, default=str(DIGITS_REFERENCE_PATH))
    args = parser.parse_args(argv)
    print(f"FD reference statistics -> {write_digits_reference(args.classifier, args.out)}")


if __name__ == "__main__":
    main()
