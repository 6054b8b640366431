"""A worker module that cannot be imported: it prints, then raises at import time."""

import sys

print("broken_app: stdout before the import fails")
print("broken_app: stderr before the import fails", file=sys.stderr)
raise ImportError("broken_app refuses to be imported")
