"""Shared by the reproduction-row tests (tests/test_reproduce*.py): an independent walk over a
row's figures, so the tests check finiteness without going through rtlab.reproduce.schema."""


def floats(v):
    """Every float inside ``v`` (nested dicts and lists), depth first."""
    if isinstance(v, dict):
        for x in v.values():
            yield from floats(x)
    elif isinstance(v, list):
        for x in v:
            yield from floats(x)
    elif isinstance(v, float):
        yield v
