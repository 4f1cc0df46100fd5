"""MNIST on 300 PCA coordinates of L2-normalised images: SO-SC vs SO-FR vs RSN (PAPER.md §4–§5).

    python examples/mnist.py --data /path/to/mnist     # quick preset on the IDX files there
    python examples/mnist.py --data none               # quick preset on scikit-learn's 8x8 digits
    python examples/mnist.py --preset paper --data DIR # N = 20 000, 1000 epochs: a GPU job

Without --data the script uses ../shared/data/mnist (relative to the repository) when it exists,
else the 8x8 digits. Same as `rsnjax reproduce mnist --preset P --out DIR`.
"""

import os

from rsnjax.experiments._examples import main

SHARED = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "mnist"))

if __name__ == "__main__":
    main("mnist", __doc__.splitlines()[0], data_default=SHARED if os.path.isdir(SHARED) else "none")
