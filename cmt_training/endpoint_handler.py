"""handler.py of a CMT Hub folder: the custom handler Hugging Face Inference Endpoints call to serve the model.

`cmt_training.model_card.write_endpoint_handler` copies this file into the folder as `handler.py` (with a
`requirements.txt`). It uses only transformers and the code the folder carries (`trust_remote_code=True`), not the
`cmt-speech` package. Requests:

- `{"inputs": "<base64 audio>", "parameters": {"text": "...", "top_k": 2}}` (JSON; any format FFmpeg decodes);
- `{"inputs": {"audio": "<base64>", "text": "..."}}`;
- the raw audio bytes as the body (`inputs` is then bytes), with the transcript in `parameters.text`.

Without a transcript the model classifies from the audio alone. The response is the pipeline's output: a list of
`{"label", "score"}`, best first (a regression head: `{"score", ...}`).
"""

import base64
import binascii
from typing import Any

from transformers import pipeline


TASK = "audio-text-classification"
PARAMETERS = ("top_k", "function_to_apply", "max_audio_seconds")


class EndpointHandler:
    def __init__(self, path: str = ""):
        self.classifier = pipeline(TASK, model=path or ".", trust_remote_code=True)

    @staticmethod
    def _audio(inputs) -> bytes:
        if isinstance(inputs, (bytes, bytearray)):
            audio = bytes(inputs)
        elif isinstance(inputs, str):
            try:
                audio = base64.b64decode(inputs, validate=True)
            except (binascii.Error, ValueError) as error:
                raise ValueError(f"`inputs` must be base64-encoded audio: {error}") from error
        else:
            raise ValueError(f"`inputs` must be audio bytes or base64 text, got {type(inputs).__name__}.")
        if not audio:
            raise ValueError("The request holds no audio (0 bytes).")
        return audio

    def __call__(self, data: dict[str, Any]) -> list[dict[str, Any]] | dict[str, Any]:
        if not isinstance(data, dict) or "inputs" not in data:
            raise ValueError('Send {"inputs": <base64 audio>, "parameters": {"text": "..."}}.')
        inputs, parameters = data["inputs"], dict(data.get("parameters") or {})
        text = parameters.pop("text", None)
        if isinstance(inputs, dict):
            text = inputs.get("text", text)
            inputs = inputs.get("audio")
        unknown = sorted(set(parameters) - set(PARAMETERS))
        if unknown:
            raise ValueError(f"Unknown parameters {unknown}; this endpoint takes text, {', '.join(PARAMETERS)}.")
        return self.classifier(self._audio(inputs), text=text, allow_audio_only=True, **parameters)
