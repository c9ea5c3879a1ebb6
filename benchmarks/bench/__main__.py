from benchmarks.bench.cli import main

raise SystemExit(main())
