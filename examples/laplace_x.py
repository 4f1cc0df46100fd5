"""The 2-D heavy-tailed Laplace "X": SO-SC vs SO-FR vs RSN, plain vs accelerated sampling
(docs/SCIENCE.md §4–§5).

    python examples/laplace_x.py                       # quick preset → results/laplace-x-quick/
    python examples/laplace_x.py --preset paper        # the paper's settings (N = 5000, 10 000 chains)

Same as `rsnjax reproduce laplace-x --preset P --out DIR`.
"""

from rsnjax.experiments._examples import main

if __name__ == "__main__":
    main("laplace-x", __doc__.splitlines()[0])
