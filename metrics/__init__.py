"""Evaluation: an installed package whose modules are also scripts (`python metrics/<script>.py`,
`python -m metrics.<script>`, or the `sp2p-colorization` / `sp2p-compute-metrics` commands)."""
