"""``python -m srr`` (and ``torchrun -m srr train ...``): the ``srr`` command line."""
from srr.cli import main

if __name__ == "__main__":
    main()
