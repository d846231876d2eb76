"""The built-in scheduling plugins, one module per plugin type, named after it.

Importing this package imports every module in it, and each plugin module registers its type
with `@register`: a new plugin is one new module here, with no list to extend. An error in any
module fails the import loudly."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
