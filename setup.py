"""mindrlhf: Reinforcement Learning from Human Feedback on MindSpore."""
from setuptools import find_packages, setup

setup(
    name="mindrlhf",
    version="0.1.0",
    description="MindSpore-native RLHF: SFT, reward modelling and PPO (plus DPO and GRPO)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9,<3.12",
    packages=find_packages(include=["mindrlhf", "mindrlhf.*"]),
    # the CPU kernels' C++ sources, compiled on first use (mindrlhf/kernels/build.py)
    package_data={"mindrlhf.kernels": ["csrc/*.cc", "csrc/*.h"]},
    install_requires=[
        "mindspore==2.10.0",
        "numpy<2",  # mindspore 2.10 fails on its first numpy-touching op with numpy 2.x
        "sentencepiece",
        "pyyaml",
        "safetensors",
        "tqdm",
        "matplotlib",
        "decorator",  # imported by MindSpore's bundled AKG compiler when runtime.graph_kernel is on
    ],
    extras_require={
        "gguf": ["gguf==0.19.0", "tokenizers", "jinja2"],
        "test": ["pytest", "pytest-xdist", "torch==2.13.0", "transformers", "tokenizers", "gguf==0.19.0",
                 "accelerate", "jinja2"],
    },
    entry_points={"console_scripts": ["mindrlhf=mindrlhf.cli:main"]},
    classifiers=["License :: OSI Approved :: Apache Software License", "Programming Language :: Python :: 3"],
)
