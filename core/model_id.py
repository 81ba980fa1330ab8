"""A body model's id as every layer writes and checks it: ``<family>:<16 hex>`` (the family and 16 hex digits of the
content digest of what defines its mesh and joints; `fitting.body_model.model_content_id` computes it).

Here, below the body model module, so that what only checks an id (the fits table's writers) need not load torch.
"""
from __future__ import annotations

import re

MODEL_FAMILIES = ("smpl", "smplh", "smplx", "open")
# The families whose tree has SMPL-X's 55 joints (hands, jaw, eyes) and an expression space: whole-body fits.
WHOLEBODY_FAMILIES = ("smplx",)
MODEL_ID_PATTERN = re.compile(rf"^({'|'.join(MODEL_FAMILIES)}):[0-9a-f]{{16}}$")
