"""The hand-written trainer ``pomona train`` is measured against (run as a script).

What a careful engineer would write without Pomona: pandas with the pyarrow engine reads
only the needed columns as float32, tensors are standardized once, and each epoch slices
shuffled batches of one ``randperm`` through the same linear model and SGD settings. It
writes the weights with ``torch.save``, so both sides end with a file on disk.

``python -m bench.train_reference DATA OUT EPOCHS BATCH [THREADS]``
"""

from __future__ import annotations

import sys

FEATURES = ["temp", "rainfall", "humidity"]
TARGETS = ["apples", "oranges"]


def main(argv: list[str]) -> None:
    import numpy as np
    import pandas as pd
    import torch

    data, out, epochs, batch = argv[0], argv[1], int(argv[2]), int(argv[3])
    if len(argv) > 4:
        torch.set_num_threads(int(argv[4]))
    columns = FEATURES + TARGETS
    frame = pd.read_csv(
        data, engine="pyarrow", usecols=columns, dtype=dict.fromkeys(columns, "float32")
    )
    values = torch.from_numpy(np.ascontiguousarray(frame[columns].to_numpy(np.float32)))
    del frame
    x, y = values[:, : len(FEATURES)], values[:, len(FEATURES) :]
    x = (x - x.mean(0)) / x.std(0)
    y = (y - y.mean(0)) / y.std(0)
    torch.manual_seed(0)
    model = torch.nn.Linear(len(FEATURES), len(TARGETS))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch):
            index = order[start : start + batch]
            optimizer.zero_grad(set_to_none=True)
            loss = (model(x[index]) - y[index]).pow(2).mean()
            loss.backward()
            optimizer.step()
    torch.save(model.state_dict(), out)
    print(f"reference: {len(x)} rows, final batch loss {float(loss.detach()):.4f}")


if __name__ == "__main__":
    main(sys.argv[1:])
