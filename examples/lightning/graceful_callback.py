"""GracefulStop: a PyTorch Lightning callback that stops or checkpoints every rank after the same step.

    from graceful_callback import GracefulStop

    stop = GracefulStop(checkpoint_dir="checkpoints/lightning")
    trainer = Trainer(strategy="ddp", ..., callbacks=[stop])
    trainer.fit(model, datamodule, ckpt_path=stop.rank.resume_path)   # None: from scratch

At the end of every training batch it asks ``rank.should_stop(trainer.global_step)`` (Lightning's
global step: optimizer steps since the start of the run, the same on every rank). At the step T the
coordinator chose, every rank calls ``trainer.save_checkpoint(<checkpoint_dir>/step_<T>.ckpt)`` (a
collective: rank 0 writes the file, every rank waits in its barrier), confirms T with that path
(``rank.checkpointed``; rank 0 first fsyncs the file) and sets ``trainer.should_stop``, so Lightning
ends ``fit`` after this batch and the script exits 0. ``rank.should_checkpoint`` saves the same way
and keeps training. The relaunch gives ``rank.resume_path``: pass it as ``ckpt_path`` and Lightning
restores the model, the optimizer and the loops, its global step going on from T.

Every rank confirms the same path: the file is one for the job. Lightning writes it in place (no
rename), but each step has its own name and the coordinator commits T only once rank 0 has confirmed
it, after the write and an fsync: a torn file is never a committed one.

Lightning's own SIGTERM handling (Lightning 2.x, ``trainer/connectors/signal_connector.py``): under
torchrun's environment Lightning picks ``TorchElasticEnvironment``; the launcher is external, so on
SIGTERM its handler sets ``trainer.received_sigterm`` and calls ``dist.broadcast`` from inside the
signal handler; the training loop broadcasts that flag from rank 0 before every batch and raises
``SIGTERMException`` (a ``SystemExit``, exit 0) on every rank: a stop with no checkpoint, and a
collective entered from a signal handler at whatever point the rank was. Under graceful the
coordinator takes the signal and asks the ranks for an aligned stop over its channel; a SIGTERM that
reaches a rank directly is graceful's escalation (the rank did not confirm within ``--grace``) and must
end it. So, when the rank runs under the coordinator (``rank.coordinated``), ``on_train_start`` puts
back the SIGTERM handler in place before ``fit`` (Lightning installs its own between ``on_fit_start``
and ``on_train_start``; it puts the old one back itself when ``fit`` ends). Lightning's per-batch
broadcast of a flag that stays 0 is left alone: it costs one tiny collective per batch. Without the
coordinator (plain ``torchrun``, plain ``python``) nothing is changed: with several ranks the callback
then leaves stopping to Lightning (a rank's own signal would stop it at a step its peers do not share,
inside ``save_checkpoint``'s collective); alone, Ctrl+C or the control file stop it at the next step
with a checkpoint, as the client does anywhere.
"""

import os
import signal

import lightning.pytorch as pl

import graceful_exit


class GracefulStop(pl.Callback):
    """Stops (and checkpoints) at the step graceful's coordinator aligned every rank on."""

    def __init__(self, checkpoint_dir=os.path.join("checkpoints", "lightning")):
        self.checkpoint_dir = checkpoint_dir
        self.rank = graceful_exit.rank()
        self._sigterm_before_fit = None

    def on_fit_start(self, trainer, pl_module):
        # Lightning's _SignalConnector installs its SIGTERM handler after this hook.
        self._sigterm_before_fit = signal.getsignal(signal.SIGTERM)

    def on_train_start(self, trainer, pl_module):
        if self.rank.coordinated and self._sigterm_before_fit is not None:
            signal.signal(signal.SIGTERM, self._sigterm_before_fit)
        print(f"rank {trainer.global_rank}/{trainer.world_size}: training from global step "
              f"{trainer.global_step}", flush=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if not self.rank.coordinated and trainer.world_size > 1:
            return  # see the module's docstring: Lightning's own SIGTERM handling applies
        if self.rank.should_stop(step):
            path = self._save(trainer, step)
            print(f"rank {trainer.global_rank}: stopped after step {step} ({self.rank.trigger}), "
                  f"saved {path}", flush=True)
            trainer.should_stop = True
        elif self.rank.should_checkpoint(step):
            path = self._save(trainer, step)
            print(f"rank {trainer.global_rank}: checkpoint at step {step} saved {path}", flush=True)

    def _save(self, trainer, step):
        path = os.path.join(self.checkpoint_dir, f"step_{step}.ckpt")
        trainer.save_checkpoint(path)  # collective: every rank calls it, rank 0 writes
        if trainer.is_global_zero:
            with open(path, "rb") as f:
                os.fsync(f.fileno())
            directory = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        self.rank.checkpointed(step, path)
        return path
