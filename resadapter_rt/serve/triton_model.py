"""The ``resadapter`` model of a Triton repository (python backend, BLS): ``resadapter-rt triton-repo``
copies this file to ``REPO/resadapter/1/model.py``.

It runs ``ResAdapterPipeline``'s scheduler loop (text encoding, denoising, decoding) with runners that
call the repository's component models (``text_encoder``, ``unet``, ``vae_decoder``...) through
Business Logic Scripting, so the C++ server runs the networks and this model only the loop. Needs
``resadapter-rt`` installed in the python backend's environment. Inputs and output are those of
``resadapter-rt serve`` (``resadapter_rt.serve.protocol.INPUTS``; ``image`` UINT8 [H, W, 3]).
"""

import json
from pathlib import Path

import numpy as np
import torch
import triton_python_backend_utils as pb_utils  # provided by Triton's python backend

from resadapter_rt.errors import ResAdapterRTError
from resadapter_rt.runtime.pipeline import ResAdapterPipeline, Timings
from resadapter_rt.serve.batching import prepare_request
from resadapter_rt.serve.protocol import INPUTS


class ComponentModel:
    """A pipeline runner that runs one component model of the repository by a BLS request."""

    def __init__(self, name: str, input_names: list[str], output_names: list[str]) -> None:
        self.name, self.input_names, self.output_names = name, tuple(input_names), tuple(output_names)

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        tensors = [pb_utils.Tensor(name, inputs[name].detach().cpu().numpy()) for name in self.input_names]
        response = pb_utils.InferenceRequest(model_name=self.name, requested_output_names=list(self.output_names),
                                             inputs=tensors).exec()
        if response.has_error():
            raise pb_utils.TritonModelException(f"{self.name}: {response.error().message()}")
        return {name: torch.from_numpy(np.array(pb_utils.get_output_tensor_by_name(response, name).as_numpy()))
                for name in self.output_names}


class TritonPythonModel:
    """Triton's python-backend entry points."""

    def initialize(self, args: dict) -> None:
        export = Path(args["model_repository"]) / args["model_version"] / "export"
        manifest = json.loads((export / "manifest.json").read_text())
        runners = {name: ComponentModel(name, [i["name"] for i in spec["inputs"]], [o["name"] for o in spec["outputs"]])
                   for name, spec in manifest["components"].items()}
        self.pipe = ResAdapterPipeline(export, manifest, runners, backend="triton")

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            parameters = {}
            for name, (datatype, _) in INPUTS.items():
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is not None:
                    value = tensor.as_numpy().reshape(-1)[0]
                    parameters[name] = value.decode() if datatype == "BYTES" else bool(value) if datatype == "BOOL" else \
                        int(value) if datatype == "INT64" else float(str(np.float32(value)))
            try:
                prepared = prepare_request(self.pipe, parameters)
            except ResAdapterRTError as exc:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc))))
                continue
            conditioning = self.pipe.encode(prepared)
            latents = self.pipe.denoise(prepared, conditioning, Timings())
            image = np.asarray(self.pipe.decode(latents, None, prepared.circular)[0])
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("image", image)]))
        return responses

