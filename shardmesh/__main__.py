import sys

from shardmesh.cli import main

sys.exit(main())
