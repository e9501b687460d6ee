"""Build hook: pyproject.toml holds the metadata; this names the packages, because one lives outside em/.

The Hydra config sits at the repository root (``conf/``) and ships inside the package as ``em.conf``
(``pkg://em.conf``): a regular install copies it into the package, an editable one maps ``em.conf`` to ``conf/``.
"""

from setuptools import find_packages, setup

setup(packages=find_packages(include=["em", "em.*"]) + ["em.conf"], package_dir={"em.conf": "conf"})
