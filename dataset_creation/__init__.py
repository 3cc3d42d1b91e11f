"""Building training data: an installed package whose modules are also the original layout's scripts.

`python dataset_creation/<script>.py ...`, `python -m dataset_creation.<script> ...` and the
`sp2p-*` console commands of pyproject.toml run the same code. Modules import `ldm` and each
other, never the entry points (main.py, edit_cli.py) or `metrics`.
"""
