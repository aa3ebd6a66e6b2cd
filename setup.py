"""CMT: cross-modal pretrained transformer for speech emotion recognition and sentiment analysis."""

import re
from pathlib import Path

from setuptools import setup


_here = Path(__file__).parent
_version = re.search(r'__version__ = "([^"]+)"', (_here / "modeling_cmt" / "__init__.py").read_text()).group(1)

install_requires = [
    "torch>=2.4,<3",
    "torchaudio>=2.4,<3",
    "torchcodec>=0.5",
    "transformers>=5.24,<6",  # transformers.utils.output_capturing (tested with 5.24)
    "huggingface_hub>=1.0,<3",
    "safetensors>=0.4",
    "numpy>=1.26",
    "tqdm>=4.66",
]

extras = {
    # Corpus builders (hub_datasets/), the training package (cmt_training/) and the scripts in examples/.
    "train": [
        "datasets>=5.0,<6",
        "evaluate>=0.4,<0.5",
        "accelerate>=1.0,<2",
        "scikit-learn>=1.4,<2",
        "scipy>=1.11,<2",
        "h5py>=3.10,<4",
        "filelock>=3.12,<5",  # tower caches shared by runs that start at once
    ],
    # Plots for the demo, reports and benchmarks.
    "demo": [
        "matplotlib>=3.8,<4",
    ],
    # Emotion timelines of long recordings (modeling_cmt/timeline.py, cmt-timeline): Silero VAD (its ONNX models ship
    # in the wheel) run by ONNX Runtime, SRT / WebVTT transcripts; plots need the demo extra.
    "timeline": [
        "silero-vad>=6.2,<7",
        "onnxruntime>=1.20,<2",
        "webvtt-py>=0.6,<0.7",
    ],
    # ONNX export and int8 quantization (modeling_cmt/export.py, cmt-export): torch.onnx's dynamo exporter needs
    # onnxscript; the exported folder itself runs with numpy, onnxruntime and tokenizers only.
    "export": [
        "onnx>=1.17,<2",
        "onnxscript>=0.5,<0.8",
        "onnxruntime>=1.20,<2",
    ],
    # The web demo (examples/app.py, `make app`).
    "app": [
        "gradio>=6,<7",
        "gradio_client>=2,<3",
    ],
    "dev": [
        "pytest>=8,<10",
        "ruff>=0.6",
        "webrtcvad-wheels>=2.0.14,<3",  # the VAD comparison in benchmarks/timeline.py
        "selenium>=4.20,<5",  # the web demo's browser test drives Debian's chromium through chromedriver
    ],
}
extras["app"] = extras["app"] + extras["timeline"] + extras["demo"]
extras["dev"] = (
    extras["dev"] + extras["train"] + extras["demo"] + extras["timeline"] + extras["export"] + extras["app"]
)

setup(
    name="cmt-speech",
    version=_version,
    description="Cross-modal pretrained transformer (HuBERT + RoBERTa) for speech emotion recognition "
    "and sentiment analysis, in the Hugging Face ecosystem",
    long_description=(_here / "README.md").read_text() if (_here / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=[
        "modeling_cmt",
        "hub_datasets",
        "cmt_training",
        "cmt_training.metrics",
        "cmt_training.metrics.emotion_recognition",
        "cmt_training.metrics.sentiment_regression",
    ],
    package_data={
        "modeling_cmt": ["presets/*.json", "data/*.json"],
        "hub_datasets": ["cards/*.md", "data/*.json"],
        "cmt_training": ["MODEL_CARD.md"],
    },
    install_requires=install_requires,
    extras_require=extras,
    entry_points={
        "console_scripts": [
            "cmt-predict = modeling_cmt.predict:main",
            "cmt-timeline = modeling_cmt.timeline:main",
            "cmt-export = modeling_cmt.export:main",
        ]
    },
)
