"""Everything declarative lives in setup.cfg; this file only maps the repository's `model_cards/`
(the canonical card templates, at the repo root as the project layout wants) into the package as
`hf_bae/model_cards/`, so that an installed wheel carries them. setup.cfg cannot express a package
that lives outside its parent's folder next to `packages = find:`."""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["hf_bae", "hf_bae.*"]) + ["hf_bae.model_cards"],
    package_dir={"hf_bae.model_cards": "model_cards"},
    package_data={"hf_bae.model_cards": ["*.j2"], "hf_bae": ["tasks/*.jsonl", "interpret/data/*.jsonl"]},
)
