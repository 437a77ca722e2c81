from fastpgd.cli import main

raise SystemExit(main())
