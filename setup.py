"""The two data folders of the repository ship inside the `launcher` package: slurm/ as
launcher/templates (the sbatch templates) and configs/ as launcher/configs, read at run time
through launcher/packaged.py. Everything else is declared in setup.cfg."""
from setuptools import find_packages, setup

DATA_FOLDERS = {"launcher.templates": "slurm", "launcher.configs": "configs"}

setup(
    packages=find_packages(include=["core", "launcher", "launcher.*", "training", "training.*"])
    + list(DATA_FOLDERS),
    package_dir=DATA_FOLDERS,
    package_data={"launcher.templates": ["*.sbatch.j2"], "launcher.configs": ["*.yaml"]},
)
