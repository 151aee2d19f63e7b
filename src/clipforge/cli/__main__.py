"""``python -m clipforge.cli <command> ...``: the same as ``clipforge <command> ...``."""

from clipforge.cli.main import main

raise SystemExit(main())
