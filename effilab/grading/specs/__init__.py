"""Exercise specs, one module per notebook. Importing this package registers every exercise."""
from . import nb01  # noqa: F401
