"""The built-in model backends, one module each; importing a module registers its backend.

`BACKENDS` (in `safeturn.models.spec`) imports every public module here the first time it is
asked, so a new backend is one new file with a `@BACKENDS.register(...)` factory.
"""
