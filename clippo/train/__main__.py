import sys

from clippo.train.main import main

sys.exit(main())
