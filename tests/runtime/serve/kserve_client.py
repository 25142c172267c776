"""Drive a server with KServe's ``InferenceRESTClient``; run by the kserve virtualenv's Python.

``python kserve_client.py BASE_URL MODEL`` reads ``{"rows": [[...], ...]}`` on stdin and
prints one JSON object: the health answers and the predictions of a JSON and of a binary
request. Nothing from Pomona is imported: this runs where only kserve is installed.
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig


async def main(base_url: str, model: str, rows: list[list[float]]) -> dict[str, object]:
    x = np.asarray(rows, dtype=np.float32)
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=60))
    try:
        answers: dict[str, object] = {
            "live": await client.is_server_live(base_url),
            "ready": await client.is_server_ready(base_url),
            "model_ready": await client.is_model_ready(base_url, model),
            "other_model_ready": await client.is_model_ready(base_url, "nosuchmodel"),
        }
        for binary in (False, True):
            tensor = InferInput(name="features", shape=list(x.shape), datatype="FP32")
            tensor.set_data_from_numpy(x, binary_data=binary)
            request = InferRequest(model_name=model, infer_inputs=[tensor], request_id="kserve")
            response = await client.infer(base_url, request, model_name=model)
            key = "binary" if binary else "json"
            answers[key] = {
                "id": response.id,
                "model_name": response.model_name,
                "output": response.outputs[0].name,
                "predictions": response.outputs[0].as_numpy().tolist(),
            }
        return answers
    finally:
        await client.close()


if __name__ == "__main__":
    doc = json.load(sys.stdin)
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], doc["rows"]))))
