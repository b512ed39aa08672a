"""The progress bar the CLI uses by default where ``rich`` is installed: Lightning's Rich bar
without its negative epoch total ("Epoch 0/-2" for a run bounded by ``max_steps``)."""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


class EpochProgressBar(RichProgressBar):
    """Lightning's ``RichProgressBar``, whose training description reads "Epoch k/<max_epochs - 1>".

    A run bounded by ``trainer.max_steps`` alone has ``max_epochs = -1`` (no epoch limit), which
    Lightning shows as "Epoch 0/-2"; here a run without an epoch limit shows "Epoch k" alone, as
    Lightning's TQDM bar does. Everything else is Lightning's.
    """

    def _get_train_description(self, current_epoch: int) -> str:
        text = f"Epoch {current_epoch}"
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and max_epochs >= 0:
            text += f"/{max_epochs - 1}"
        # padded to the validation bar's description, as Lightning does, to avoid flicker
        return f"{text:{len(self.validation_description)}}"
