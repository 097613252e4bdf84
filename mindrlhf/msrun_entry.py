"""Entry script that ``msrun`` starts on every worker (msrun runs a file, so no relative imports here)."""
import os
import sys

from mindrlhf.cli import main

if __name__ == "__main__":
    print(f"[worker] pid {os.getpid()}", flush=True)  # lets the launcher name the worker msrun saw die
    sys.exit(main())
