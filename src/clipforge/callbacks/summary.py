"""``ModelSummary``: Lightning's rich model summary without the FLOPs that were never counted.

Lightning counts FLOPs only through the module's ``example_input_array``; clipforge's modules take dict batches
and have none, so its summary printed a FLOPs column of zeros and "Total FLOPs: 0" on every run. This summary
prints the FLOPs only when some were counted, and the totals on two lines.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import RichModelSummary
from lightning.pytorch.utilities.model_summary.model_summary import (
    get_formatted_model_size,
    get_human_readable_count,
)

__all__ = ["ModelSummary"]


class ModelSummary(RichModelSummary):
    """The layer table (name, type, parameters, train / eval mode) and the parameter totals.

    Args:
        max_depth: depth of the layers listed (``1``: the module's direct children; ``-1``: all).
    """

    def __init__(self, max_depth: int = 1) -> None:
        super().__init__(max_depth=max_depth)

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        if total_flops:
            RichModelSummary.summarize(
                summary_data,
                total_parameters,
                trainable_parameters,
                model_size,
                total_training_modes,
                total_flops=total_flops,
                **summarize_kwargs,
            )
            return
        from rich import get_console
        from rich.table import Table

        columns = [(name, values) for name, values in summary_data if name != "FLOPs"]
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        for name, _ in columns:
            table.add_column(
                name, justify="right" if name == "Params" else "left", style="dim" if name == " " else None
            )
        for row in zip(*(values for _, values in columns)):
            table.add_row(*row)
        console = get_console()
        console.print(table)
        frozen = total_parameters - trainable_parameters
        console.print(
            f"Params: {get_human_readable_count(trainable_parameters)} trainable, "
            f"{get_human_readable_count(frozen)} frozen, {get_human_readable_count(total_parameters)} total "
            f"({get_formatted_model_size(model_size)} MB)"
        )
        console.print(
            f"Modules: {total_training_modes['train']} in train mode, {total_training_modes['eval']} in eval mode"
        )
