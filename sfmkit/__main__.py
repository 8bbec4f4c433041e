"""``python -m sfmkit`` runs the command-line interface."""

from sfmkit.cli.main import main

if __name__ == "__main__":
    main()
