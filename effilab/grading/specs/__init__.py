"""Exercise specs, one module per notebook. Importing this package registers every exercise."""
from . import nb01  # noqa: F401
from . import nb02  # noqa: F401
from . import nb03  # noqa: F401
from . import nb04  # noqa: F401
from . import nb05  # noqa: F401
from . import nb06  # noqa: F401
from . import nb07  # noqa: F401
from . import nb07_layers  # noqa: F401
from . import nb08  # noqa: F401
from . import nb09  # noqa: F401
from . import nb10  # noqa: F401
