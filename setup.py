"""scipion-em-cryoai: the cryoAI core (``cryoai_core``) and its Scipion plugin (``cryoai_scipion``)."""
import pathlib
import re

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent
VERSION = re.search(r'^__version__ = "([^"]+)"', (HERE / "cryoai_core" / "__init__.py").read_text(),
                    re.MULTILINE).group(1)

CORE = [
    "torch>=2.1",
    "numpy>=1.24",
    "mrcfile>=1.4",
    "starfile>=0.5,<0.6",
    "pandas>=2.1",
    "roma>=1.4",
    "pyyaml>=6",
    "tqdm>=4.60",
    "matplotlib>=3.6",
]
SCIPION = [
    # Scipion pins numpy 1.26 and scipy <= 1.10; pandas 3 needs numpy 2, so keep pandas 2 alongside.
    "scipion-pyworkflow>=3.11",
    "scipion-em>=3.11",
    "scipion-app>=3.8",
    "scipion-em-relion>=5.0",
    "scipion-em-cryosparc2>=5.0",
    "pandas<3",
    "numpy<2",
]
TEST = ["pytest>=7"]
BENCHMARKS = [
    # atomic models -> density maps for the realistic benchmark suite (cryoai_core.atoms)
    "gemmi>=0.6",
]

setup(
    name="scipion-em-cryoai",
    version=VERSION,
    description="cryoAI ab initio reconstruction with amortized pose inference, with a Scipion plugin",
    long_description=(HERE / "README.rst").read_text(),
    long_description_content_type="text/x-rst",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["cryoai_core", "cryoai_core.*", "cryoai_scipion", "cryoai_scipion.*"]),
    package_data={
        "cryoai_core": ["data/*.mrc"],
        "cryoai_scipion": ["protocols.conf", "*.png"],
    },
    install_requires=CORE,
    extras_require={"scipion": SCIPION, "test": TEST, "benchmarks": BENCHMARKS,
                    "all": SCIPION + TEST + BENCHMARKS},
    entry_points={
        "console_scripts": ["cryoai = cryoai_core.cli:main"],
        "pyworkflow.plugin": ["cryoai_scipion = cryoai_scipion"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: MIT License",
        "Topic :: Scientific/Engineering :: Bio-Informatics",
    ],
)
