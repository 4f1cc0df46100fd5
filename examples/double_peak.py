"""The 1-D double peak: SO-SC vs SO-FR vs RSN (docs/SCIENCE.md §4–§5).

    python examples/double_peak.py                    # quick preset → results/double-peak-quick/
    python examples/double_peak.py --preset paper      # the paper's settings (69 s on 2 CPU cores)

Same as `rsnjax reproduce double-peak --preset P --out DIR`.
"""

from rsnjax.experiments._examples import main

if __name__ == "__main__":
    main("double-peak", __doc__.splitlines()[0])
