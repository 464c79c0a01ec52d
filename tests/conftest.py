from __future__ import annotations

import os

# Ultralytics must never reach for the network here (no internet on CI machines).
os.environ.setdefault("YOLO_OFFLINE", "1")
