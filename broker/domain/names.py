"""Name patterns shared by the domain, the contract terms and the API schemas.

This module imports nothing of the broker's, so ``contracts`` can use the patterns without
importing the domain that in turn names the contract type.
"""

from __future__ import annotations

import re

#: A dataset field: a Unicode letter or ``_`` first, then at most 62 letters, digits or ``_``.
FIELD_NAME = re.compile(r"^[^\W\d]\w{0,62}$")
#: An organisation id: lower-case letters, digits and ``-``, 2 to 63 characters.
ORG_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
