"""``python -m maskkit.cli`` (torchrun and the tests use it)."""
from maskkit.cli import main

if __name__ == "__main__":  # pragma: no cover
    main()
