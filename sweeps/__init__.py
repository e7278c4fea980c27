"""db3d's named sweeps (`db3d sweep sweep=NAME`): the YAML files beside this one, installed with db3d.

A package only so that an installed db3d finds them through importlib.resources (db3d.distributed.spec).
"""
