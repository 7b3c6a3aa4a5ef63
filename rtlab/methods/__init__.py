"""One module or subpackage per method of the source documents (patents 000-002, papers 003-004).

See ``docs/architecture.md`` ("Where a new method goes").

Import the submodules explicitly (``from rtlab.methods import conformity``); nothing heavy is
imported here.
"""
