"""``python -m repo_manager.cli``: the same entry point as the ``repo-manager`` script."""

from repo_manager.cli import main

if __name__ == "__main__":
    main()
