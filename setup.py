"""streamformer_jax: JAX/Flax StreamFormer (streaming video representation learning)."""
from setuptools import find_packages, setup

# Pins that co-install on Python 3.11 (see the project's environment notes).
CORE = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "chex==0.1.92",
    "einops==0.8.2",
    "ml-collections==1.1.0",
    "numpy==2.4.6",
    "safetensors==0.8.0",
    "grain==0.2.18",
    "array-record==0.8.6",
    "av==18.1.0",
    "tensorboardX==2.6.5",
    "tqdm==4.70.1",
    "absl-py>=2.1,<3",
    "pillow==12.3.0",  # JPEG frames in records: FFmpeg's MJPEG encoder shifts neutral colours and is slower
    "google-crc32c==1.8.0",  # TFRecord checksums (a pure-Python fallback exists)
    "sentencepiece==0.2.1",  # the SigLIP text tokenizer (a local spiece.model)
    "pyyaml==6.0.4",  # the original metadata file (all.yaml) for `convert from-metadata`
]
# PyTorch interop: only for `.pth` checkpoints and the converters' parity tests.
# torch is pinned exactly: an unpinned torch resolves to a multi-GB CUDA build.
TORCH = ["torch==2.13.0", "transformers==4.52.3"]
# tensorflow-datasets reads converted ArrayRecord output without TensorFlow (docs/data_convert.md).
TFDS = ["tensorflow-datasets==4.9.10"]
# XLA's TPU compiler for ahead-of-time compiles on a machine without a TPU (streamformer_jax.train.aot); it pins
# libtpu 0.0.42.*. Installed in its own environment in CI (libtpu probes for a TPU at every JAX start-up).
TPU = ["jax[tpu]==0.10.2"]
# sklearn: an independent AP reference.
TEST = ["pytest==9.2.0", "pytest-xdist==3.8.0", "scikit-learn==1.7.2"] + TORCH + TFDS

setup(
    name="streamformer_jax",
    version="0.1.0",
    description="StreamFormer streaming video backbone in JAX/Flax: model, converters, extraction, training.",
    python_requires=">=3.10",
    packages=find_packages(include=["streamformer_jax*", "data_pipelines*", "eval*"]),
    install_requires=CORE,
    # Apache Beam for dataset conversion at Kinetics scale; it resolves protobuf 6.33.x, so it is kept out of
    # the default install (see docs/data_convert.md).
    extras_require={"test": TEST, "torch": TORCH, "tfds": TFDS, "beam": ["apache-beam==2.77.0"],
                    "tpu": TPU},
)
