"""The programs around the library: the `patchscaler` command (`cli`) and its folder
runs (`folder_run`, sharded over `torchrun` ranks by `distributed`), its progress bars,
`python -m patchscaler.info` (`info`) and the web app (`ui`).

Nothing is imported here: `patchscaler --help` must answer without importing torch.
"""
