"""``python -m itm.embedded``: the supervisor of one embedded server (``supervisor.py``)."""

import sys

from itm.embedded.supervisor import main

sys.exit(main())
