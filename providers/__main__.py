"""`python -m providers`: print the README's field × vendor table from the adapters' field tables."""

from providers.fields import render, tables

print(render(tables()), end="")
