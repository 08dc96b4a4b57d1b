import sys

from clippo.eval.main import main

sys.exit(main())
