"""An MLServer inference runtime that serves an ONNX model with onnxruntime.

The serving benchmark runs it inside MLServer's own virtualenv (see ``bench/serve.py``), as
MLServer's documentation writes custom runtimes: a subclass of ``mlserver.MLModel`` whose
``load()`` opens the model and whose ``predict()`` decodes the V2 request and encodes the
response with MLServer's ``NumpyCodec``. The model file comes from ``parameters.uri`` in
``model-settings.json``; the session uses one intra-op thread, like each ``pomona serve``
worker. This module imports only in that virtualenv, never in Pomona's.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxRuntime(MLModel):
    """One onnxruntime session; the first model input takes the request's first tensor."""

    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        uri = await get_model_uri(self.settings)
        self._session = ort.InferenceSession(
            uri, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        features = self.decode(payload.inputs[0], default_codec=NumpyCodec)
        features = np.asarray(features, dtype=np.float32)
        (predictions,) = self._session.run([self._output], {self._input: features})
        return InferenceResponse(
            id=payload.id,
            model_name=self.name,
            model_version=self.version,
            outputs=[NumpyCodec.encode_output(name=self._output, payload=predictions)],
        )
