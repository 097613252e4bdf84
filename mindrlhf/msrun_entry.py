"""Entry script that ``msrun`` starts on every worker (msrun runs a file, so no relative imports here)."""
import sys

from mindrlhf.cli import main

if __name__ == "__main__":
    sys.exit(main())
