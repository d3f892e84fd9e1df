"""The `unlearn` entry point's own package: a name no other project uses.

The library lives in the packages `utils` and `methods` (their names are the users'); such generic
names can be shadowed by another `utils` on the path, so the entry point checks which ones it got
before importing anything from them.
"""
