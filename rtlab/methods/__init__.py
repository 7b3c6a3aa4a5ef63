"""One module per seed method (conformity, falloff, control_points, sequencing, ...).

Import the submodules explicitly (``from rtlab.methods import conformity``); nothing heavy is
imported here.
"""
