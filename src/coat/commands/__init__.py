"""The ``coat`` command's sub-commands: each module registers its parsers and calls one library function."""
