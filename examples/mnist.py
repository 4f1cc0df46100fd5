"""MNIST on 300 PCA coordinates of L2-normalised images: SO-SC vs SO-FR vs RSN (docs/SCIENCE.md §4–§5).

    python examples/mnist.py --data /path/to/mnist     # quick preset on the IDX files there
    python examples/mnist.py --data none               # quick preset on scikit-learn's 8x8 digits
    python examples/mnist.py --preset paper --data DIR # N = 20 000, 1000 epochs: a GPU job

--data is required: MNIST is not part of rsnjax and nothing is downloaded (docs/SCIENCE.md §6).
Same as `rsnjax reproduce mnist --preset P --data-dir DIR --out DIR`.
"""

from rsnjax.experiments._examples import main

if __name__ == "__main__":
    main("mnist", __doc__.splitlines()[0])
