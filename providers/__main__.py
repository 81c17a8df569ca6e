"""`python -m providers`: print the README's field × vendor table from the adapters' field
tables; `python -m providers capabilities`: the capability × vendor table."""

import sys

from providers.fields import capability_cells, render, render_capabilities, tables

print(render_capabilities(capability_cells()) if sys.argv[1:] == ["capabilities"] else render(tables()), end="")
