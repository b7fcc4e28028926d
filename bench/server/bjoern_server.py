"""bjoern on HOST PORT with the benchmark app (bjoern has no command line of its own)."""
import sys

import bjoern

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from app import application

bjoern.run(application, sys.argv[1], int(sys.argv[2]))
