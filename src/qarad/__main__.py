"""`python -m qarad ...` (and `torchrun -m qarad ...`): the `qarad` command."""
from .cli import entrypoint

entrypoint()
