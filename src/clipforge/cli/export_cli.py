"""``clipforge-export-cli``: write the LightningCLI YAML of a Hydra composition.

clipforge-export-cli experiment=clip_demo trainer.max_epochs=2 -o run.cli.yaml [--config-name train]
"""

from __future__ import annotations

import argparse
import os

import yaml

from clipforge.utils.cli_export import to_lightning_cli
from clipforge.utils.hydra import compose


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for clipforge-train")
    parser.add_argument("-o", "--output", default="run.cli.yaml", help="where to write the YAML")
    parser.add_argument("--config-name", default="train", help="primary config (train, eval, generate)")
    parser.add_argument("--output-dir", default=None, help="value of paths.output_dir (default: next to -o)")
    a = parser.parse_args(argv)
    out_dir = a.output_dir or os.path.dirname(os.path.abspath(a.output))
    cfg = compose(a.overrides, a.config_name, output_dir=out_dir)
    with open(a.output, "w") as f:
        yaml.safe_dump(to_lightning_cli(cfg), f, sort_keys=False)
    print(a.output)


if __name__ == "__main__":
    main()
