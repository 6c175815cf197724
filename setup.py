"""unipt-reid: UniPT (ICCV 2023) for text-to-image person re-identification, as a fast-reid plugin."""
from setuptools import find_packages, setup

setup(
    name="unipt-reid",
    version="0.1.0",
    description="UniPT: unified pre-training with pseudo texts for text-to-image person ReID (fast-reid plugin)",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["unipt_plugin", "unipt_plugin.*"]),
    package_data={"unipt_plugin": ["pseudo_text/*.yaml", "**/*.yaml"]},
    include_package_data=True,
    # torch, torchvision and fastreid are installed by the Makefile (see README): fastreid 1.4.0
    # pins torch==1.13.1 in its metadata, so it is installed with --no-deps.
    install_requires=[],
)
