"""Flower's configuration file, read by ``celery -A tasks flower`` from the working directory.

Address, port and authentication come from the environment (``config/flower.py``);
an unauthenticated Flower refuses to start in production.
"""

import os

from config import load_settings
from config.flower import flower_options

globals().update(flower_options(load_settings().APP_ENV, os.environ))
