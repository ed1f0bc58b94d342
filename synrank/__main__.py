from synrank.cli import main

raise SystemExit(main())
