"""Print numpy.random.RandomState(seed).permutation(n) for each "n:seed" in argv[1] (comma separated), as
a JSON list of lists. The original's train/validation split is exactly this permutation (scvi DataSplitter)."""

import json
import sys

try:
    import numpy as np
except ImportError as e:
    print(f"check_simulated_split: numpy missing ({e})", file=sys.stderr)
    sys.exit(1)

out = []
for case in sys.argv[1].split(","):
    n, seed = (int(x) for x in case.split(":"))
    out.append(np.random.RandomState(seed).permutation(n).tolist())
print(json.dumps(out))
