"""`python -m fastgw` is the `fastgw` command."""
from fastgw.cli import main

raise SystemExit(main())
