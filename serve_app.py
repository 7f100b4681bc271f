"""The API alone on Ray Serve: ``serve run serve_app:app`` (or ``serve run serve_config.yaml``).

It reads MongoDB at ``ITM_MONGO_URI`` (database ``ITM_DB``, default ``itm``); the
deployment itself (``@serve.deployment`` + ``@serve.ingress``) is
``itm.api.serving.ApiDeployment``, shared with ``python -m itm.run``. ``serve run``
listens on 127.0.0.1:8000 unless Serve is already running; for port 5000 use
``serve run serve_config.yaml``.
"""

from itm.api.serving import api_application
from itm.config import Settings

app = api_application(Settings.from_env())
